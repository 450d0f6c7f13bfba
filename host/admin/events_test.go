package admin

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/trigger"
)

// newEventsAPI is newAPI with the agent's triggers wired as the daemon
// wires them: a dispatcher following the programs, delivering through a
// router to fake VMs that answer 404 at the event path (as an app
// without a handler does) unless the program is "ok".
func newEventsAPI(t *testing.T) (*apiFixture, *trigger.Dispatcher) {
	t.Helper()
	be := &backendtest.Backend{}
	f := &apiFixture{be: be, code: t.TempDir()}
	f.manager = lifecycle.New(lifecycle.Options{Backend: be, IdleTimeout: -1})
	f.programs = front.NewPrograms(f.manager)
	rt := &front.Router{Programs: f.programs, Manager: f.manager, Log: slog.New(slog.DiscardHandler)}
	d := trigger.New(trigger.Options{Attempts: 1, Serve: func(w http.ResponseWriter, r *http.Request, id string) {
		if id != "ok" {
			http.NotFound(w, r)
			return
		}
		rt.ServeProgram(w, r, id)
	}})
	f.programs.Changed = d.Changed
	l, err := Listen(filepath.Join(t.TempDir(), "agent.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	srv := &http.Server{Handler: (&Server{Programs: f.programs, Manager: f.manager, Log: slog.New(slog.DiscardHandler), Events: d}).Handler()}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Close(ctx)
		f.manager.Close()
		f.manager.StopAll(ctx)
	})
	f.client = NewClient(f.addr, "")
	return f, d
}

// POST /v1/events answers 202 with the subscribed programs; their
// statuses show the deliveries (a program without a handler: the 404
// recorded), and program status prints them; bad events are 400s.
func TestPostEventAndDeliveriesInStatus(t *testing.T) {
	f, _ := newEventsAPI(t)
	for id, on := range map[string]string{
		"ok":      `"on": {"http": false, "message": [{"topic": "orders"}]}`,
		"nohand":  `"on": {"http": true, "message": [{"topic": "orders"}], "schedule": "0 0 1 1 *"}`,
		"nothing": `"on": {"http": true}`,
	} {
		doc := fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, %s}`, f.code, on)
		if code, res := f.call(t, "PUT", "/v1/programs/"+id, doc); code != http.StatusCreated {
			t.Fatalf("deploy %s: %d %v", id, code, res)
		}
	}
	code, res := f.call(t, "POST", "/v1/events", `{"topic": "orders", "body": {"n": 1}}`)
	if code != http.StatusAccepted || fmt.Sprint(res["programs"]) != "[nohand ok]" || res["event"] == "" {
		t.Fatalf("post: %d %v", code, res)
	}
	var ok, nohand Status
	waitStatus := func(id string, st *Status) {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			*st = Status{}
			if err := f.client.Do("GET", "/v1/programs/"+id, nil, st); err != nil {
				t.Fatal(err)
			}
			if st.Triggers != nil && len(st.Triggers.Deliveries) == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no delivery recorded: %+v", id, st)
			}
		}
	}
	waitStatus("ok", &ok)
	waitStatus("nohand", &nohand)
	if d := ok.Triggers.Deliveries[0]; !d.OK || d.Status != 200 || d.Event != res["event"] || d.Trigger != "message:orders" || !ok.Running {
		t.Errorf("ok: %+v, running %v", d, ok.Running)
	}
	if d := nohand.Triggers.Deliveries[0]; d.OK || d.Status != 404 || d.Attempts != 1 || !strings.Contains(d.Error, "404") ||
		nohand.Triggers.Schedule != "0 0 1 1 *" {
		t.Errorf("nohand: %+v %+v", d, nohand.Triggers)
	}
	var st Status
	if err := f.client.Do("GET", "/v1/programs/nothing", nil, &st); err != nil || st.Triggers != nil {
		t.Errorf("a program without triggers: %+v %v", st.Triggers, err)
	}

	var out, errs bytes.Buffer
	if rc := Command([]string{"--admin", f.addr, "status", "nohand"}, &out, &errs); rc != 0 ||
		!strings.Contains(out.String(), "schedule:   0 0 1 1 *") || !strings.Contains(out.String(), "message:orders  failed 404  1") {
		t.Errorf("program status: %d\n%s%s", rc, out.String(), errs.String())
	}
	out.Reset()
	if rc := Command([]string{"--admin", f.addr, "event", "orders", `{"n": 2}`}, &out, &errs); rc != 0 || !strings.Contains(out.String(), "to [nohand ok]") {
		t.Errorf("program event: %d %s%s", rc, out.String(), errs.String())
	}

	for body, want := range map[string]int{
		`{"topic": ""}`:                   http.StatusBadRequest,
		`{"body": {}}`:                    http.StatusBadRequest,
		`{"topic": "t", "colour": "red"}`: http.StatusBadRequest,
		`{"topic": "t"} {"topic": "u"}`:   http.StatusBadRequest,
		`{"topic": "t", "body": [1,`:      http.StatusBadRequest,
		`{"topic": "t", "body": "` + strings.Repeat("x", trigger.MaxBody+2048) + `"}`: http.StatusRequestEntityTooLarge,
		`{"topic": "nobody"}`: http.StatusAccepted,
	} {
		if code, res := f.call(t, "POST", "/v1/events", body); code != want {
			t.Errorf("%.60s: %d %v, want %d", body, code, res, want)
		}
	}
}
