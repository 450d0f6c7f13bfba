package front

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/protocol/message"
)

// frontFixture is a router in front of fake VMs.
type frontFixture struct {
	be       *backendtest.Backend
	manager  *lifecycle.Manager
	programs *Programs
	metrics  *metrics.Metrics
	url      string
}

// newFront serves a router (with root as its Root) over programs whose
// VMs be starts.
func newFront(t *testing.T, be *backendtest.Backend, opt lifecycle.Options, root string) *frontFixture {
	t.Helper()
	if be.Handler == nil {
		be.Handler = backendtest.Echo
	}
	opt.Backend = be
	if opt.IdleTimeout == 0 {
		opt.IdleTimeout = -1
	}
	f := &frontFixture{be: be, manager: lifecycle.New(opt)}
	f.programs = NewPrograms(f.manager)
	f.metrics = metrics.New(func() int { return len(f.manager.Running()) })
	srv := httptest.NewServer(&Router{Programs: f.programs, Manager: f.manager, Metrics: f.metrics, Log: slog.New(slog.DiscardHandler), Root: root})
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		f.manager.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		f.manager.StopAll(ctx)
	})
	f.url = srv.URL
	return f
}

// deploy adds a program; on says how it is triggered.
func (f *frontFixture) deploy(t *testing.T, id string, on manifest.On) {
	t.Helper()
	if err := f.programs.Deploy(id, &manifest.Program{Code: manifest.Code{Interface: "asgi", Entrypoint: "main:app", Path: "/srv/" + id}, On: on}); err != nil {
		t.Fatal(err)
	}
}

// get requests path (with Host host when set) and returns the status,
// the program's echo (when 200) or the error document, and the response.
func (f *frontFixture) get(t *testing.T, path, host string) (int, backendtest.Seen, map[string]string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", f.url+path, nil)
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var seen backendtest.Seen
	var doc map[string]string
	if resp.StatusCode == 200 && resp.Header.Get("Content-Type") == "application/json" {
		json.Unmarshal(body, &seen)
	} else {
		json.Unmarshal(body, &doc)
	}
	return resp.StatusCode, seen, doc, resp
}

// counted returns the metrics' text.
func (f *frontFixture) counted(t *testing.T) string {
	rec := httptest.NewRecorder()
	f.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// Programs are reached at /vm/{id} (root_path /vm/{id}, the path below it
// decoded and raw) and on host names whose first label is their id
// (root_path empty); unknown programs and programs not on HTTP are 404
// JSON errors; /healthz names no program. Each relayed request is counted
// under its program.
func TestRouterRoutesByPathAndHost(t *testing.T) {
	f := newFront(t, &backendtest.Backend{}, lifecycle.Options{}, "")
	f.deploy(t, "hello", manifest.On{HTTP: true})
	f.deploy(t, "hidden", manifest.On{Persistent: true})
	for _, c := range []struct {
		path, host string
		want       backendtest.Seen
	}{
		{"/vm/hello/a%20b/c?x=1", "", backendtest.Seen{RootPath: "/vm/hello", Path: "/a b/c", RawPath: "/a%20b/c", Query: "x=1"}},
		{"/vm/hello", "", backendtest.Seen{RootPath: "/vm/hello", Path: "/", RawPath: "/"}},
		{"/x/y", "hello.example.org", backendtest.Seen{Path: "/x/y", RawPath: "/x/y"}},
		{"/", "hello:8080", backendtest.Seen{Path: "/", RawPath: "/"}},
	} {
		status, seen, doc, _ := f.get(t, c.path, c.host)
		c.want.Method, c.want.Host = "GET", seen.Host
		if status != 200 || seen != c.want {
			t.Errorf("%s (host %q): %d %+v %v, want %+v", c.path, c.host, status, seen, doc, c.want)
		}
	}
	for _, c := range []struct{ path, host string }{{"/vm/hidden/", ""}, {"/vm/nope/", ""}, {"/", ""}, {"/vm/", ""}, {"/x", "nope.example.org"}} {
		status, _, doc, resp := f.get(t, c.path, c.host)
		if status != 404 || doc["error"] != "no such program" || doc["request_id"] == "" || resp.Header.Get("X-Request-Id") != doc["request_id"] {
			t.Errorf("%s (host %q): %d %v", c.path, c.host, status, doc)
		}
	}
	if status, _, _, resp := f.get(t, "/healthz", ""); status != 200 || resp.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("/healthz: %d", status)
	}
	m := f.counted(t)
	if !strings.Contains(m, `ferry_requests_total{program="hello",status="200"} 4`) || strings.Contains(m, `program="nope"`) || strings.Contains(m, `program="hidden"`) {
		t.Errorf("metrics:\n%s", m)
	}
}

// With Root set, every request goes to that program as it came: root_path
// empty, /vm/... and /healthz included.
func TestRouterRootServesOneProgram(t *testing.T) {
	f := newFront(t, &backendtest.Backend{}, lifecycle.Options{}, "main")
	f.deploy(t, "main", manifest.On{HTTP: true})
	for _, path := range []string{"/", "/vm/other/x", "/healthz"} {
		status, seen, doc, _ := f.get(t, path, "")
		if status != 200 || seen.RootPath != "" || seen.Path != path {
			t.Errorf("%s: %d %+v %v", path, status, seen, doc)
		}
	}
	if m := f.counted(t); !strings.Contains(m, `ferry_requests_total{program="main",status="200"} 3`) {
		t.Errorf("metrics:\n%s", m)
	}
}

// A program that fails to start is a 502 for its request; a node at its
// cap with every VM busy is a 503 with Retry-After.
func TestRouterBootFailureAndCapacity(t *testing.T) {
	broken := newFront(t, &backendtest.Backend{Refuse: &message.ConfigResult{Phase: []byte("app"), Message: []byte("no module named main")}},
		lifecycle.Options{}, "")
	broken.deploy(t, "broken", manifest.On{HTTP: true})
	if status, _, doc, _ := broken.get(t, "/vm/broken/", ""); status != http.StatusBadGateway || doc["error"] != "the program failed to start" {
		t.Fatalf("a program that fails to start: %d %v", status, doc)
	}

	f := newFront(t, &backendtest.Backend{}, lifecycle.Options{MaxRunning: 1}, "")
	f.deploy(t, "a", manifest.On{HTTP: true})
	f.deploy(t, "b", manifest.On{HTTP: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := make(chan struct{})
	go func() { // a request in flight holds a's VM
		defer close(held)
		req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/vm/a/sleep", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for f.programs.Route("a").Limiter.InFlight() == 0 || f.manager.Instance("a") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the held request did not reach a")
		}
		time.Sleep(5 * time.Millisecond)
	}
	status, _, doc, resp := f.get(t, "/vm/b/", "")
	if status != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || !strings.Contains(doc["error"], "capacity") {
		t.Fatalf("a boot past the cap: %d %v", status, doc)
	}
	cancel()
	<-held
}

// Deleting a program while a request waits on its boot leaves no VM: the
// request gets a 502, the program is gone (404), and a persistent
// program's supervision ends with it.
func TestDeleteDuringBootLeavesNoVM(t *testing.T) {
	be := &backendtest.Backend{Gate: make(chan struct{})}
	f := newFront(t, be, lifecycle.Options{}, "")
	f.deploy(t, "slow", manifest.On{HTTP: true})
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get(f.url + "/vm/slow/")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	vm := <-be.Started()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.programs.Delete(ctx, "slow"); err != nil {
		t.Fatal(err)
	}
	if !vm.Ended() {
		t.Fatal("the booting VM still runs after Delete returned")
	}
	if status := <-answered; status != http.StatusBadGateway {
		t.Fatalf("the request waiting on the boot got %d, want 502", status)
	}
	if status, _, _, _ := f.get(t, "/vm/slow/", ""); status != 404 {
		t.Fatalf("after Delete: %d", status)
	}

	f.deploy(t, "always", manifest.On{Persistent: true})
	vm = <-be.Started()
	if err := f.programs.Delete(ctx, "always"); err != nil {
		t.Fatal(err)
	}
	close(be.Gate)
	time.Sleep(50 * time.Millisecond) // a supervisor still running would boot again now
	if !vm.Ended() || be.Live() != 0 || be.Boots() != 2 || len(f.manager.Running()) != 0 {
		t.Fatalf("after deleting a booting persistent program: ended %v, %d live, %d boots, running %v", vm.Ended(), be.Live(), be.Boots(), f.manager.Running())
	}
}

// A client that leaves while its program boots is not answered, nor
// logged or counted as a failure: the metrics count the request as 499
// (nginx's "client closed request"), not as the 502 of a failed start.
func TestClientLeavingDuringBootIsNotA502(t *testing.T) {
	be := &backendtest.Backend{Gate: make(chan struct{})}
	f := newFront(t, be, lifecycle.Options{}, "")
	f.deploy(t, "slow", manifest.On{HTTP: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failed := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/vm/slow/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		failed <- err
	}()
	<-be.Started()
	cancel()
	if err := <-failed; err == nil {
		t.Fatal("a request cancelled during the boot was answered")
	}
	want := `ferry_requests_total{program="slow",status="499"} 1`
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(f.counted(t), want); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in:\n%s", want, f.counted(t))
		}
	}
	if m := f.counted(t); strings.Contains(m, `status="502"`) {
		t.Fatalf("the client that left was counted as a 502:\n%s", m)
	}
	close(be.Gate)
}

// A persistent program of a cluster is served only where it runs, on the
// VM its supervisor started: a request never boots one (it would be a
// second copy), and another node's request is a 503 naming the owner.
func TestPersistentProgramsAreNeverBootedByARequest(t *testing.T) {
	be := &backendtest.Backend{Handler: backendtest.Echo}
	manager, programs := persistentKeeper(t, be, 0)
	owner := "node2"
	srv := httptest.NewServer(&Router{Programs: programs, Manager: manager, Log: slog.New(slog.DiscardHandler),
		Owner: func(string) (bool, string) { return owner == "", owner }})
	t.Cleanup(srv.Close)
	get := func() (int, string) {
		resp, err := http.Get(srv.URL + "/vm/keeper/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Ferry-Node")
	}
	if status, node := get(); status != http.StatusServiceUnavailable || node != "node2" {
		t.Errorf("on another node's program: %d naming %q, want 503 naming node2", status, node)
	}
	owner = "" // this node holds it, but its supervisor has not started it
	if status, _ := get(); status != http.StatusServiceUnavailable {
		t.Errorf("with no VM running: %d, want 503", status)
	}
	if n := be.Boots(); n != 0 {
		t.Fatalf("requests booted %d VMs of a persistent program", n)
	}
	// The supervisor's VM serves.
	inst, err := manager.Acquire(context.Background(), programs.Route("keeper").Program)
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
	if status, _ := get(); status != http.StatusOK {
		t.Errorf("with the supervisor's VM running: %d, want 200", status)
	}
}

// A request target with bytes outside ASCII (RFC 9112 §3.2) is a 400 and
// the connection is closed, as uvicorn and hypercorn answer it; the
// program never sees it.
func TestRouterRefusesATargetOutsideASCII(t *testing.T) {
	f := newFront(t, &backendtest.Backend{}, lifecycle.Options{}, "main")
	f.deploy(t, "main", manifest.On{HTTP: true})
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(conn, "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("status %d, close %v; want 400 and closed", resp.StatusCode, resp.Close)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the connection stays open (read %d, %v)", n, err)
	}
	if status, seen, _, _ := f.get(t, "/caf%C3%A9", ""); status != 200 || seen.RawPath != "/caf%C3%A9" {
		t.Errorf("the same path percent-encoded: %d %+v", status, seen)
	}
}

// persistentKeeper deploys "keeper", a persistent program of a cluster
// (with a time limit of seconds), over fake VMs be starts; the manager is
// stopped with the test.
func persistentKeeper(t *testing.T, be *backendtest.Backend, seconds float64) (*lifecycle.Manager, *Programs) {
	t.Helper()
	manager := lifecycle.New(lifecycle.Options{Backend: be, InitPath: "/nonexistent/init", IdleTimeout: -1})
	t.Cleanup(func() {
		manager.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		manager.StopAll(ctx)
	})
	programs := NewPrograms(manager)
	programs.ClusterPersists = true
	if err := programs.Deploy("keeper", &manifest.Program{Code: manifest.Code{Interface: "asgi", Entrypoint: "main:app", Path: "/srv/keeper"},
		On: manifest.On{HTTP: true, Persistent: true}, Resources: manifest.Resources{Seconds: seconds}}); err != nil {
		t.Fatal(err)
	}
	return manager, programs
}

// FastRoute finds what ServeHTTP's match finds for the requests an
// event-loop front may relay itself, and refuses the rest: unknown
// programs, programs not on HTTP, reserved paths, other interfaces.
func TestFastRouteMatchesTheRouter(t *testing.T) {
	f := newFront(t, &backendtest.Backend{}, lifecycle.Options{}, "")
	f.deploy(t, "hello", manifest.On{HTTP: true})
	f.deploy(t, "hidden", manifest.On{Persistent: true})
	if err := f.programs.Deploy("exe", &manifest.Program{Code: manifest.Code{Interface: "executable", Entrypoint: "run", Path: "/srv/exe"}, On: manifest.On{HTTP: true}}); err != nil {
		t.Fatal(err)
	}
	rt := &Router{Programs: f.programs, Manager: f.manager}
	for _, c := range []struct {
		host, path    string
		id, root, sub string
		ok            bool
	}{
		{"x", "/vm/hello/a/b", "hello", "/vm/hello", "/a/b", true},
		{"x", "/vm/hello", "hello", "/vm/hello", "/", true},
		{"hello.example:8080", "/a", "hello", "", "/a", true},
		{"x", "/vm/nope/a", "", "", "", false},
		{"nope.example", "/a", "", "", "", false},
		{"x", "/vm/hidden/a", "", "", "", false},
		{"x", "/vm/exe/a", "", "", "", false},
		{"x", "/vm//a", "", "", "", false},
		{"x", "/healthz", "", "", "", false},
	} {
		got, ok := rt.FastRoute(c.host, c.path)
		if ok != c.ok || (ok && (got.ID != c.id || got.RootPath != c.root || got.Path != c.sub || got.Route == nil)) {
			t.Errorf("FastRoute(%q, %q) = %+v, %v; want %s %s %s, %v", c.host, c.path, got, ok, c.id, c.root, c.sub, c.ok)
		}
	}
	root := &Router{Programs: f.programs, Manager: f.manager, Root: "hello"}
	if got, ok := root.FastRoute("any", "/vm/x"); !ok || got.ID != "hello" || got.Path != "/vm/x" || got.RootPath != "" {
		t.Errorf("with Root: %+v, %v", got, ok)
	}
}
