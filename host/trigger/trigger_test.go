package trigger

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/internal/supervise"
)

// fakePrograms answer events as each program's handler says, and keep
// what they received.
type fakePrograms struct {
	mu       sync.Mutex
	handlers map[string]http.HandlerFunc
	got      map[string][]received
}

// received is one request a fake program got.
type received struct {
	event   Event
	attempt string
	header  http.Header
}

func (f *fakePrograms) serve(w http.ResponseWriter, r *http.Request, id string) {
	body, _ := io.ReadAll(r.Body)
	var ev Event
	json.Unmarshal(body, &ev)
	f.mu.Lock()
	h := f.handlers[id]
	if r.Method == "POST" && r.URL.Path == EventPath {
		f.got[id] = append(f.got[id], received{event: ev, attempt: r.Header.Get(HeaderAttempt), header: r.Header.Clone()})
	}
	f.mu.Unlock()
	if h == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	h(w, r)
}

func (f *fakePrograms) count(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got[id])
}

func (f *fakePrograms) received(id string) []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.got[id]...)
}

// newDispatcher returns a dispatcher over fake programs with short
// retries, closed when the test ends.
func newDispatcher(t *testing.T, o Options) (*Dispatcher, *fakePrograms) {
	f := &fakePrograms{handlers: map[string]http.HandlerFunc{}, got: map[string][]received{}}
	o.Serve = f.serve
	if o.Retry == (supervise.Policy{}) {
		o.Retry = supervise.Policy{Initial: time.Millisecond, Max: 4 * time.Millisecond}
	}
	d := New(o)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return d, f
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
	}
}

func on(o manifest.On) *manifest.Program { return &manifest.Program{On: o} }

// record waits until id's record holds n deliveries and returns it.
func record(t *testing.T, d *Dispatcher, id string, n int) Record {
	t.Helper()
	var r Record
	waitFor(t, "deliveries of "+id, func() bool { r, _ = d.Deliveries(id); return len(r.Deliveries) >= n && r.Pending == 0 })
	return r
}

// A posted event reaches the programs whose subscriptions match it, as a
// POST to EventPath carrying the event, and no other; each delivery is
// recorded.
func TestPostReachesSubscribers(t *testing.T) {
	d, f := newDispatcher(t, Options{})
	d.Changed("orders", on(manifest.On{HTTP: true, Triggers: manifest.Triggers{Message: []manifest.Subscription{{"topic": "orders"}}}}))
	d.Changed("paid", on(manifest.On{Triggers: manifest.Triggers{Message: []manifest.Subscription{
		{"topic": "nothing"}, {"topic": "orders", "body": map[string]any{"kind": "paid"}}}}}))
	d.Changed("other", on(manifest.On{HTTP: true}))

	posted, err := d.Post("orders", json.RawMessage(`{"kind": "new", "n": 1}`))
	if err != nil || strings.Join(posted.Programs, ",") != "orders" || posted.Event == "" {
		t.Fatalf("post: %+v %v", posted, err)
	}
	posted2, _ := d.Post("orders", json.RawMessage(`{"kind": "paid"}`))
	if strings.Join(posted2.Programs, ",") != "orders,paid" {
		t.Fatalf("second post: %+v", posted2)
	}
	if p, _ := d.Post("elsewhere", nil); len(p.Programs) != 0 {
		t.Fatalf("an event nobody subscribed to went to %v", p.Programs)
	}
	record(t, d, "orders", 2)
	r := record(t, d, "paid", 1)
	got := f.received("paid")
	if len(got) != 1 || got[0].event.ID != posted2.Event || got[0].event.Kind != KindMessage || got[0].event.Topic != "orders" ||
		!json.Valid(got[0].event.Body) || !strings.Contains(string(got[0].event.Body), `"paid"`) || got[0].attempt != "1" ||
		got[0].header.Get(HeaderEvent) != KindMessage || got[0].header.Get(HeaderTopic) != "orders" ||
		got[0].header.Get(HeaderEventID) != posted2.Event || got[0].header.Get("Content-Type") != "application/json" {
		t.Fatalf("paid received %+v", got)
	}
	if dl := r.Deliveries[0]; !dl.OK || dl.Status != 204 || dl.Attempts != 1 || dl.Trigger != "message:orders" || dl.Event != posted2.Event {
		t.Errorf("record: %+v", dl)
	}
	if f.count("other") != 0 {
		t.Error("an unsubscribed program got an event")
	}
	if _, err := d.Post("", nil); err != ErrTopic {
		t.Errorf("empty topic: %v", err)
	}
	if _, err := d.Post("t", json.RawMessage(`{"unterminated`)); err == nil {
		t.Error("a body that is not JSON was accepted")
	}
}

// A program without a handler (404, 405) fails at once; a failing one
// (500, no answer) is tried Attempts times with backoff; each failure is
// recorded with its status and error.
func TestFailuresAreRecorded(t *testing.T) {
	d, f := newDispatcher(t, Options{Attempts: 3})
	sub := manifest.Triggers{Message: []manifest.Subscription{{"topic": "t"}}}
	for _, id := range []string{"missing", "method", "broken", "silent", "flaky"} {
		d.Changed(id, on(manifest.On{Triggers: sub}))
	}
	f.handlers["missing"] = func(w http.ResponseWriter, r *http.Request) { http.Error(w, `{"detail":"Not Found"}`, 404) }
	f.handlers["method"] = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(405) }
	f.handlers["broken"] = func(w http.ResponseWriter, r *http.Request) { http.Error(w, "Internal Server Error", 500) }
	f.handlers["flaky"] = func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(HeaderAttempt) == "1" {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(200)
	}
	// silent gets no answer written, as the relay writes none when the
	// request's context ends first.
	silentServe := f.serve
	d.opt.Serve = func(w http.ResponseWriter, r *http.Request, id string) {
		if id == "silent" {
			f.mu.Lock()
			f.got[id] = append(f.got[id], received{})
			f.mu.Unlock()
			return
		}
		silentServe(w, r, id)
	}
	if _, err := d.Post("t", nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id       string
		ok       bool
		status   int
		attempts int
		err      string
	}{
		{"missing", false, 404, 1, `404: {"detail":"Not Found"}`},
		{"method", false, 405, 1, "405: Method Not Allowed"},
		{"broken", false, 500, 3, "500: Internal Server Error"},
		{"silent", false, 0, 3, "no answer"},
		{"flaky", true, 200, 2, ""},
	} {
		dl := record(t, d, c.id, 1).Deliveries[0]
		if dl.OK != c.ok || dl.Status != c.status || dl.Attempts != c.attempts || dl.Error != c.err {
			t.Errorf("%s: %+v", c.id, dl)
		}
		if n := f.count(c.id); n != c.attempts {
			t.Errorf("%s: %d requests for %d attempts", c.id, n, c.attempts)
		}
	}
}

// A schedule fires at each of its times (here every second), once the
// dispatcher has started, with the scheduled time in whole seconds; a program deleted stops it and its
// record goes; Fires can keep it from firing here.
func TestScheduleFires(t *testing.T) {
	var here sync.Map
	d, f := newDispatcher(t, Options{Fires: func(_ context.Context, id string, persistent bool) bool {
		v, ok := here.Load(id)
		return !ok || v.(bool)
	}})
	here.Store("elsewhere", false)
	d.Changed("tick", on(manifest.On{Triggers: manifest.Triggers{Schedule: "* * * * * *"}}))
	d.Changed("elsewhere", on(manifest.On{Triggers: manifest.Triggers{Schedule: "@every 1s"}}))
	time.Sleep(1500 * time.Millisecond)
	if f.count("tick") != 0 {
		t.Fatal("a schedule fired before Start")
	}
	d.Start()
	waitFor(t, "three ticks", func() bool { return f.count("tick") >= 3 })
	got := f.received("tick")
	for i, g := range got[:3] {
		if g.event.Kind != KindSchedule || g.event.Schedule != "* * * * * *" || g.event.Time.Nanosecond() != 0 || g.header.Get(HeaderEvent) != KindSchedule {
			t.Errorf("tick %d: %+v", i, g)
		}
		if i > 0 && !g.event.Time.After(got[i-1].event.Time) {
			t.Errorf("tick %d at %s, after %s", i, g.event.Time, got[i-1].event.Time)
		}
	}
	r := record(t, d, "tick", 3)
	if r.Deliveries[0].Trigger != "schedule" || !r.Deliveries[0].OK {
		t.Errorf("record: %+v", r.Deliveries[0])
	}
	d.Changed("tick", nil)
	n := f.count("tick")
	time.Sleep(2500 * time.Millisecond)
	if f.count("tick") > n+1 { // one may have been on its way
		t.Errorf("a deleted program's schedule went on firing: %d then %d", n, f.count("tick"))
	}
	if _, ok := d.Deliveries("tick"); ok {
		t.Error("a deleted program's record is still there")
	}
	if f.count("elsewhere") != 0 {
		t.Error("a schedule fired where Fires said no")
	}
}

// A program's record keeps the last Keep deliveries, newest first; past
// MaxPending deliveries in progress, an event is recorded as dropped;
// OnDelivery hears of each.
func TestRecordBoundsAndPending(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	results := map[string]int{}
	d, f := newDispatcher(t, Options{Keep: 3, MaxPending: 2, OnDelivery: func(id string, dl Delivery) {
		mu.Lock()
		results[id+" "+dl.Kind+" "+dl.Result()]++
		mu.Unlock()
	}})
	d.Changed("p", on(manifest.On{Triggers: manifest.Triggers{Message: []manifest.Subscription{{"topic": "t"}}}}))
	f.handlers["p"] = func(w http.ResponseWriter, r *http.Request) { <-release; w.WriteHeader(200) }
	var ids []string
	for range 3 {
		p, _ := d.Post("t", nil)
		ids = append(ids, p.Event)
	}
	var r Record
	waitFor(t, "the dropped event", func() bool { r, _ = d.Deliveries("p"); return len(r.Deliveries) == 1 })
	if len(r.Deliveries) != 1 || r.Deliveries[0].Event != ids[2] || !strings.HasPrefix(r.Deliveries[0].Error, "dropped") {
		t.Fatalf("the third event, past MaxPending: %+v", r)
	}
	if r, _ := d.Deliveries("p"); r.Pending != 2 {
		t.Errorf("pending: %d", r.Pending)
	}
	close(release)
	record(t, d, "p", 3)
	for range 3 {
		p, _ := d.Post("t", nil)
		ids = append(ids, p.Event)
		record(t, d, "p", 3)
	}
	waitFor(t, "the last delivery", func() bool { r, _ := d.Deliveries("p"); return r.Deliveries[0].Event == ids[5] })
	r, _ = d.Deliveries("p")
	if len(r.Deliveries) != 3 || r.Deliveries[0].Event != ids[5] || r.Deliveries[1].Event != ids[4] || r.Deliveries[2].Event != ids[3] {
		t.Errorf("record: %+v", r.Deliveries)
	}
	mu.Lock()
	defer mu.Unlock()
	if results["p message dropped"] != 1 || results["p message ok"] != 5 || len(results) != 2 {
		t.Errorf("OnDelivery heard %v", results)
	}
}

// Close gives up a delivery waiting to retry and records why.
func TestCloseGivesUpRetries(t *testing.T) {
	d, f := newDispatcher(t, Options{Retry: supervise.Policy{Initial: time.Hour, Max: time.Hour}})
	d.Changed("p", on(manifest.On{Triggers: manifest.Triggers{Message: []manifest.Subscription{{"topic": "t"}}}}))
	f.handlers["p"] = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }
	d.Post("t", nil)
	waitFor(t, "the first attempt", func() bool { return f.count("p") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r, _ := d.Deliveries("p")
	if len(r.Deliveries) != 1 || !strings.HasPrefix(r.Deliveries[0].Error, "the agent is stopping") || r.Deliveries[0].Attempts != 1 {
		t.Errorf("record: %+v", r)
	}
}

// Events go to a path the front refuses from outside.
func TestEventPathIsReserved(t *testing.T) {
	if !strings.HasPrefix(EventPath, front.ReservedPrefix) {
		t.Errorf("%s is not under %s", EventPath, front.ReservedPrefix)
	}
}
