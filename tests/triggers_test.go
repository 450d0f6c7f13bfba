package tests

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
)

// eventsApp keeps the events it receives at /_ferry/event (with the
// marking header) and lists them at GET /events. One worker, so one list.
const eventsApp = `
import json, time

events = []

async def read(receive):
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            return body

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    if scope["method"] == "POST" and scope["path"] == "/_ferry/event":
        ev = json.loads(await read(receive))
        ev["header"] = headers.get(b"x-ferry-event", b"").decode()
        ev["root_path"] = scope["root_path"]
        ev["received"] = time.time()
        events.append(ev)
        status, out = 200, b'{"ok": true}'
    elif scope["path"] == "/events":
        status, out = 200, json.dumps(events).encode()
    else:
        status, out = 404, b'{"detail": "Not Found"}'
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
`

// noHandlerApp is a FastAPI app without an event route (404), and
// raisingApp one whose event handler raises (500).
const (
	noHandlerApp = `
from fastapi import FastAPI
app = FastAPI()

@app.get("/")
def root():
    return {"hello": "world"}
`
	raisingApp = `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    raise RuntimeError("no event handler here")
`
)

// eventsExecutable is eventsApp as an executable: Python's standard
// library serving HTTP/1.1 on $PORT, a thread per connection as the other
// executables of these tests (a server that serves one keep-alive
// connection at a time can sit on an idle one of init's pool while a
// request waits on another).
const eventsExecutable = `#!/usr/bin/python3
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

events = []

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/_ferry/event":
            return self.send(404, b"{}")
        ev = json.loads(body)
        ev["header"] = self.headers.get("X-Ferry-Event", "")
        events.append(ev)
        self.send(200, b"{}")

    def do_GET(self):
        self.send(200, json.dumps(events).encode())

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
`

// receivedEvent is one event as eventsApp kept it.
type receivedEvent struct {
	ID       string          `json:"id"`
	Type     string          `json:"type"`
	Time     time.Time       `json:"time"`
	Schedule string          `json:"schedule"`
	Topic    string          `json:"topic"`
	Body     json.RawMessage `json:"body"`
	Header   string          `json:"header"`
	RootPath string          `json:"root_path"`
}

// Triggers beyond HTTP, on the sandbox backend with real apps: a program
// scheduled every second receives an event every second; a posted event
// reaches the subscribed programs (booted for it; an ASGI app and an
// executable) and not an unsubscribed one; programs without a handler get their failures recorded while the
// agent serves on; the event path is not reachable from outside.
func TestTriggersScheduleAndMessages(t *testing.T) {
	requirePythonModules(t, "fastapi")
	requireTool(t, "curl")
	events := writeApp(t, map[string]string{"main.py": eventsApp})
	noHandler := writeApp(t, map[string]string{"main.py": noHandlerApp})
	raising := writeApp(t, map[string]string{"main.py": raisingApp})
	exe := writeApp(t, map[string]string{"server.py": eventsExecutable})
	if err := chmodX(exe + "/server.py"); err != nil {
		t.Fatal(err)
	}
	program := func(code, on string) string {
		return fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, "resources": {"vcpus": 1, "workers": 1, "seconds": 30}, "on": %s}`, code, on)
	}
	config := fmt.Sprintf(`{"idle_timeout": "5m", "programs": {"ticker": %s, "orders": %s, "bystander": %s, "nohandler": %s, "raising": %s,
		"exe": {"code": {"entrypoint": "server.py", "interface": "executable", "path": %q}, "on": {"http": true, "message": [{"topic": "orders"}]}}}}`,
		program(events, `{"http": true, "schedule": "* * * * * *"}`),
		program(events, `{"http": true, "message": [{"topic": "orders"}]}`),
		program(events, `{"http": true, "message": [{"topic": "invoices"}]}`),
		program(noHandler, `{"http": false, "message": [{"topic": "orders"}]}`),
		program(raising, `{"http": false, "message": [{"topic": "orders"}]}`), exe)
	agent := serveAgent(t, config, agentOptions{})
	url := "http://" + agent.addr
	bin := mustAgent(t)
	programCmd := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"program", "--admin", agent.admin}, args...)...).CombinedOutput()
		return string(out), err
	}
	received := func(id string) []receivedEvent {
		var evs []receivedEvent
		if err := json.Unmarshal([]byte(curl(t, url+"/vm/"+id+"/events")), &evs); err != nil {
			t.Fatalf("%s's events: %v", id, err)
		}
		return evs
	}
	status := func(id string) admin.Status {
		var st admin.Status
		out, err := programCmd("status", id, "--json")
		if err != nil || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("program status %s: %v %s", id, err, out)
		}
		return st
	}

	t.Run("every second", func(t *testing.T) {
		// The ticker boots on its first event. From the latest event it
		// has then, count the events of the next five seconds: one a
		// second (±1 for the boundaries), each with its own second.
		var first []receivedEvent
		waitFor(t, 2*time.Minute, func() bool { first = received("ticker"); return len(first) > 0 }, "no scheduled event arrived")
		from := first[len(first)-1].Time
		var evs []receivedEvent
		waitFor(t, time.Minute, func() bool {
			evs = received("ticker")
			return evs[len(evs)-1].Time.After(from.Add(6 * time.Second))
		}, "the schedule stopped")
		seconds := map[time.Time]bool{}
		for _, e := range evs {
			if e.Time.After(from) && !e.Time.After(from.Add(5*time.Second)) {
				seconds[e.Time] = true
				if e.Type != "schedule" || e.Schedule != "* * * * * *" || e.Header != "schedule" || e.RootPath != "" || e.Time.Nanosecond() != 0 {
					t.Errorf("event %+v", e)
				}
			}
		}
		if n := len(seconds); n < 4 || n > 6 {
			t.Errorf("%d events in the five seconds after %s, want 5 (±1): %+v", n, from, evs)
		}
		st := status("ticker")
		if st.Triggers == nil || st.Triggers.Schedule != "* * * * * *" || len(st.Triggers.Deliveries) < 5 || !st.Triggers.Deliveries[0].OK {
			t.Errorf("ticker's status: %+v", st.Triggers)
		}
	})

	t.Run("posted event", func(t *testing.T) {
		out, err := programCmd("event", "orders", `{"order": 42}`, "--json")
		var posted struct {
			Event    string
			Programs []string
		}
		if err != nil || json.Unmarshal([]byte(out), &posted) != nil || strings.Join(posted.Programs, ",") != "exe,nohandler,orders,raising" {
			t.Fatalf("program event: %v %s", err, out)
		}
		var evs []receivedEvent
		waitFor(t, 2*time.Minute, func() bool { evs = received("orders"); return len(evs) > 0 }, "the subscribed program got no event")
		var body map[string]int
		if len(evs) != 1 || evs[0].ID != posted.Event || evs[0].Type != "message" || evs[0].Topic != "orders" ||
			json.Unmarshal(evs[0].Body, &body) != nil || body["order"] != 42 || len(body) != 1 || evs[0].Header != "message" {
			t.Fatalf("orders received %+v", evs)
		}
		// The executable gets the same event, as an HTTP/1.1 POST.
		waitFor(t, 2*time.Minute, func() bool { evs = received("exe"); return len(evs) > 0 }, "the executable got no event")
		if len(evs) != 1 || evs[0].ID != posted.Event || evs[0].Topic != "orders" || evs[0].Header != "message" {
			t.Fatalf("exe received %+v", evs)
		}
		waitFor(t, time.Minute, func() bool {
			st := status("orders")
			return st.Triggers != nil && len(st.Triggers.Deliveries) == 1 && st.Triggers.Deliveries[0].OK
		}, "the delivery was not recorded")
		if evs := received("bystander"); len(evs) != 0 {
			t.Errorf("an unsubscribed program got %+v", evs)
		}
		if st := status("bystander"); st.Triggers == nil || len(st.Triggers.Deliveries) != 0 {
			t.Errorf("bystander's status: %+v", st.Triggers)
		}
	})

	t.Run("no handler", func(t *testing.T) {
		// 404 from FastAPI: recorded at once. 500 from an app that
		// raises: retried (1 s, 2 s, 4 s), then recorded.
		var st admin.Status
		waitFor(t, 2*time.Minute, func() bool { st = status("nohandler"); return len(st.Triggers.Deliveries) == 1 }, "nohandler: no delivery recorded")
		if d := st.Triggers.Deliveries[0]; d.OK || d.Status != 404 || d.Attempts != 1 || !strings.Contains(d.Error, "Not Found") {
			t.Errorf("nohandler's delivery: %+v", d)
		}
		waitFor(t, 2*time.Minute, func() bool { st = status("raising"); return len(st.Triggers.Deliveries) == 1 }, "raising: no delivery recorded")
		if d := st.Triggers.Deliveries[0]; d.OK || d.Status != 500 || d.Attempts != 4 {
			t.Errorf("raising's delivery: %+v", d)
		}
		if out, err := programCmd("status", "raising"); err != nil || !strings.Contains(out, "message:orders  failed 500  4") {
			t.Errorf("program status for people: %v\n%s", err, out)
		}
		// Counted in the metrics.
		m := curl(t, "--unix-socket", agent.admin, "http://admin/metrics")
		for _, want := range []string{`ferry_event_deliveries_total{kind="message",program="nohandler",result="failed"} 1`,
			`ferry_event_deliveries_total{kind="message",program="orders",result="ok"} 1`} {
			if !strings.Contains(m, want) {
				t.Errorf("metrics: no %s", want)
			}
		}
		// The agent serves on.
		if got := strings.TrimSpace(curl(t, url+"/healthz")); got != "ok" {
			t.Errorf("/healthz: %q", got)
		}
		if evs := received("orders"); len(evs) != 1 {
			t.Errorf("orders after the failures: %+v", evs)
		}
	})

	t.Run("not from outside", func(t *testing.T) {
		code := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", `{"type": "message"}`, url+"/vm/orders/_ferry/event")
		if code != "404" {
			t.Errorf("a forged event answered %s", code)
		}
		if evs := received("orders"); len(evs) != 1 {
			t.Errorf("a forged event arrived: %+v", evs)
		}
	})
}

// In a cluster of three, a schedule fires on one node only: an on-demand
// program's on the Raft leader, a persistent program's on the node that
// runs it; the other nodes deliver nothing and boot nothing for it. An
// event posted to a node that does not run the persistent program is
// delivered to it through the node that does.
func TestTriggersScheduleFiresOnOneNodeOfACluster(t *testing.T) {
	code := writeApp(t, map[string]string{"main.py": eventsApp})
	program := func(on string) string {
		return fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, "resources": {"vcpus": 1, "workers": 1, "memory": 256}, "on": %s}`, code, on)
	}
	c := newTestCluster(t, 3, fmt.Sprintf(`{"idle_timeout": "5m", "programs": {"tick": %s, "ptick": %s}}`,
		program(`{"http": true, "schedule": "* * * * * *"}`), program(`{"http": true, "persistent": true, "schedule": "* * * * * *", "message": [{"topic": "pt"}]}`)))
	deliveries := func(n *clusterNode, id string) int {
		var st admin.Status
		if err := n.client.Do("GET", "/v1/programs/"+id, nil, &st); err != nil || st.Triggers == nil {
			t.Fatalf("%s's status of %s: %v %+v", n.name, id, err, st)
		}
		ok := 0
		for _, d := range st.Triggers.Deliveries {
			if d.OK {
				ok++
			}
		}
		return ok
	}
	waitFor(t, 3*time.Minute, func() bool {
		return deliveries(c.nodes[0], "tick")+deliveries(c.nodes[1], "tick") >= 5 &&
			deliveries(c.nodes[0], "ptick")+deliveries(c.nodes[1], "ptick") >= 5
	}, "five deliveries of each program")
	st, err := c.status(c.nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	owner := ""
	for _, a := range st.Programs {
		if a.Program == "ptick" {
			owner = a.Node
		}
	}
	for _, n := range c.nodes {
		for id, firing := range map[string]string{"tick": st.Leader, "ptick": owner} {
			got := deliveries(n, id)
			if n.name == firing && got < 5 || n.name != firing && got != 0 {
				t.Errorf("%s delivered %d events of %s (it fires on %s)", n.name, got, id, firing)
			}
		}
	}
	if got := running(c.nodes, "tick"); len(got) != 1 || got[0] != st.Leader {
		t.Errorf("tick runs on %v, want the leader %s alone", got, st.Leader)
	}
	for _, n := range c.nodes {
		if n.name == owner {
			continue
		}
		if err := n.client.Do("POST", "/v1/events", strings.NewReader(`{"topic": "pt"}`), nil); err != nil {
			t.Fatalf("posting an event to %s: %v", n.name, err)
		}
		waitFor(t, time.Minute, func() bool { return deliveries(n, "ptick") == 1 },
			fmt.Sprintf("an event posted to %s was not delivered to ptick, which runs on %s", n.name, owner))
		if got := running(c.nodes, "ptick"); len(got) != 1 || got[0] != owner {
			t.Errorf("ptick runs on %v, want %s alone", got, owner)
		}
		break
	}
}
