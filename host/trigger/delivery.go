package trigger

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Delivery is the outcome of one event sent to one program.
type Delivery struct {
	Event   string    `json:"event"`   // the event's id
	Time    time.Time `json:"time"`    // the event's time
	Kind    string    `json:"type"`    // KindSchedule or KindMessage
	Trigger string    `json:"trigger"` // "schedule" or "message:TOPIC"
	OK      bool      `json:"ok"`      // the program answered 2xx
	// Dropped says the event was not sent: too many were pending.
	Dropped bool   `json:"dropped,omitempty"`
	Status  int    `json:"status"`          // the last attempt's HTTP status; 0: no answer
	Error   string `json:"error,omitempty"` // why it failed
	// Attempts is how many requests were made, Seconds how long from the
	// first to the outcome.
	Attempts int     `json:"attempts"`
	Seconds  float64 `json:"seconds"`
}

// runSchedule fires the program's schedule at each of its times until ctx
// ends. Times missed (the agent was suspended) are skipped, not caught up.
func (d *Dispatcher) runSchedule(ctx context.Context, id, spec string, sched cron.Schedule, persistent bool) {
	for {
		next := sched.Next(time.Now())
		if next.IsZero() { // a schedule with no time left
			return
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if d.opt.Fires != nil && !d.opt.Fires(ctx, id, persistent) {
			continue
		}
		d.dispatch(id, &Event{ID: newID(), Kind: KindSchedule, Time: next.UTC(), Schedule: spec})
	}
}

// dispatch delivers ev to program id in the background, unless the
// program has too many deliveries pending: then it is recorded as
// dropped.
func (d *Dispatcher) dispatch(id string, ev *Event) {
	d.mu.Lock()
	p := d.programs[id]
	if p == nil {
		d.mu.Unlock()
		return
	}
	if p.pending >= d.opt.MaxPending {
		d.mu.Unlock()
		d.record(id, Delivery{Event: ev.ID, Time: ev.Time, Kind: ev.Kind, Trigger: trigger(ev), Dropped: true,
			Error: fmt.Sprintf("dropped: %d deliveries already pending", d.opt.MaxPending)})
		return
	}
	p.pending++
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		rec := d.deliver(d.ctx, id, ev)
		d.mu.Lock()
		p.pending--
		d.mu.Unlock()
		d.record(id, rec)
	}()
}

// trigger names what triggered ev, for the record.
func trigger(ev *Event) string {
	if ev.Kind == KindMessage {
		return KindMessage + ":" + ev.Topic
	}
	return KindSchedule
}

// Result is the delivery's outcome in a word: "ok", "failed" or
// "dropped".
func (rec Delivery) Result() string {
	switch {
	case rec.OK:
		return "ok"
	case rec.Dropped:
		return "dropped"
	}
	return "failed"
}

// record keeps a delivery in the program's record (dropping the oldest
// beyond Keep), logs it and tells OnDelivery.
func (d *Dispatcher) record(id string, rec Delivery) {
	if d.opt.OnDelivery != nil {
		d.opt.OnDelivery(id, rec)
	}
	if rec.OK {
		d.opt.Log.Debug("trigger: delivered", "program", id, "event", rec.Event, "trigger", rec.Trigger, "attempts", rec.Attempts)
	} else {
		d.opt.Log.Warn("trigger: delivery failed", "program", id, "event", rec.Event, "trigger", rec.Trigger,
			"status", rec.Status, "attempts", rec.Attempts, "err", rec.Error)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.programs[id]
	if p == nil {
		return // deleted meanwhile
	}
	if len(p.records) >= d.opt.Keep {
		p.records = append(p.records[:0], p.records[len(p.records)-d.opt.Keep+1:]...)
	}
	p.records = append(p.records, rec)
}

// deliver sends ev to the program until it answers 2xx, fails in a way
// that will not pass (retryable), the attempts run out, or ctx ends.
func (d *Dispatcher) deliver(ctx context.Context, id string, ev *Event) Delivery {
	body, _ := json.Marshal(ev) // an Event always encodes
	rec := Delivery{Event: ev.ID, Time: ev.Time, Kind: ev.Kind, Trigger: trigger(ev)}
	start := time.Now()
	defer func() { rec.Seconds = time.Since(start).Seconds() }()
	for n := 1; ; n++ {
		rec.Attempts = n
		rec.Status, rec.Error = d.attempt(ctx, id, ev, n, body)
		if rec.Status >= 200 && rec.Status < 300 {
			rec.OK, rec.Error = true, ""
			return rec
		}
		if ctx.Err() != nil {
			rec.Error = "the agent is stopping (" + rec.Error + ")"
			return rec
		}
		if !retryable(rec.Status) || n >= d.opt.Attempts {
			return rec
		}
		t := time.NewTimer(d.opt.Retry.Delay(n))
		select {
		case <-ctx.Done():
			t.Stop()
			rec.Error = "the agent is stopping (" + rec.Error + ")"
			return rec
		case <-t.C:
		}
	}
}

// retryable reports whether a failure may pass: no answer, a timeout, a
// program or agent in trouble or busy (408, 429, 5xx). Other answers (404
// or 405: no handler at EventPath; 400…) are the program's last word.
func retryable(status int) bool {
	return status == 0 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
}

// attempt makes one request of a delivery; it returns the status (0: no
// answer) and, for anything but 2xx, what went wrong.
func (d *Dispatcher) attempt(ctx context.Context, id string, ev *Event, n int, body []byte) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, d.opt.AttemptTimeout)
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost"+EventPath, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	// As a client's request carries it, so that an executable reads the
	// body by its length.
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(HeaderEvent, ev.Kind)
	r.Header.Set(HeaderEventID, ev.ID)
	r.Header.Set(HeaderAttempt, strconv.Itoa(n))
	if ev.Topic != "" {
		r.Header.Set(HeaderTopic, ev.Topic)
	}
	w := &recorder{header: http.Header{}}
	d.opt.Serve(w, r, id)
	switch {
	case w.status == 0 && ctx.Err() != nil:
		return 0, fmt.Sprintf("no answer within %s", d.opt.AttemptTimeout)
	case w.status == 0:
		return 0, "no answer"
	case w.status >= 200 && w.status < 300:
		return w.status, ""
	}
	msg := strings.TrimSpace(string(w.body))
	if msg == "" {
		msg = http.StatusText(w.status)
	}
	return w.status, fmt.Sprintf("%d: %s", w.status, msg)
}

// recorder is the http.ResponseWriter of an event's request: it keeps the
// status and the start of the body (for the record's error).
type recorder struct {
	header http.Header
	status int
	body   []byte
}

// maxErrorBody bounds the part of an answer kept for a failure's record.
const maxErrorBody = 200

func (w *recorder) Header() http.Header { return w.header }

func (w *recorder) WriteHeader(status int) {
	if w.status == 0 && status >= 200 { // 1xx are interim
		w.status = status
	}
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if room := maxErrorBody - len(w.body); room > 0 {
		w.body = append(w.body, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// newID returns a random event id (16 hex digits).
func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
