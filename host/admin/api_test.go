package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/protocol/message"
)

// apiFixture is the admin API of an agent whose VMs are fakes, served on
// a listener of Listen's.
type apiFixture struct {
	be       *backendtest.Backend
	manager  *lifecycle.Manager
	programs *front.Programs
	addr     string // the listener: a unix socket path or host:port
	client   *Client
	code     string // an absolute code directory for manifests
}

// newAPI serves the API on addr ("": a unix socket of the test's) with
// token.
func newAPI(t *testing.T, be *backendtest.Backend, addr, token string) *apiFixture {
	t.Helper()
	f := &apiFixture{be: be, code: t.TempDir()}
	f.manager = lifecycle.New(lifecycle.Options{Backend: be, IdleTimeout: -1, RestartBackoff: 10 * time.Millisecond,
		OnOutput: func(id string, l message.Log) { f.programs.Output(id, l) }})
	f.programs = front.NewPrograms(f.manager)
	if addr == "" {
		addr = filepath.Join(t.TempDir(), "agent.sock")
	}
	l, err := Listen(addr, token)
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	srv := &http.Server{Handler: (&Server{Programs: f.programs, Manager: f.manager, Token: token, Log: slog.New(slog.DiscardHandler)}).Handler()}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Close()
		f.manager.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		f.manager.StopAll(ctx)
	})
	f.client = NewClient(f.addr, token)
	return f
}

// manifest is a program's manifest as deploy takes it.
func (f *apiFixture) manifest(extra string) string {
	return fmt.Sprintf(`{"code": {"encoding": "directory", "entrypoint": "main:app", "interface": "asgi", "path": %q}, "on": {"http": true}%s}`, f.code, extra)
}

// call calls the API and returns the status code and the decoded answer.
func (f *apiFixture) call(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	c := f.client
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc map[string]any
	if strings.HasPrefix(path, "/v1/programs/") || method != "GET" {
		json.NewDecoder(resp.Body).Decode(&doc)
	}
	return resp.StatusCode, doc
}

// A program's life through the API: deploy, list, status of a running
// VM with its boot, stop, restart, delete; an unknown program is a 404
// for every call.
func TestProgramLifeThroughTheAPI(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{}, "", "")
	if code, doc := f.call(t, "PUT", "/v1/programs/web", f.manifest("")); code != http.StatusCreated || doc["id"] != "web" ||
		doc["interface"] != "asgi" || doc["entrypoint"] != "main:app" || doc["http"] != true || doc["running"] != false {
		t.Fatalf("deploy: %d %v", code, doc)
	}
	var list []Status
	if err := f.client.Do("GET", "/v1/programs", nil, &list); err != nil || len(list) != 1 || list[0].ID != "web" || list[0].Running {
		t.Fatalf("list: %+v %v", list, err)
	}

	inst, err := f.manager.Acquire(context.Background(), f.programs.Route("web").Program) // a request
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
	var st Status
	if err := f.client.Do("GET", "/v1/programs/web", nil, &st); err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.VM != "fake vm" || st.Started == "" || st.Timeline != message.FormatTimeline(backendtest.Timeline) ||
		st.ColdStartSeconds <= 0 || len(st.BootPhases) != 2 || st.BootPhases[0] != (BootPhase{"kernel", 0.01}) || st.BootPhases[1] != (BootPhase{"app", 0.02}) {
		t.Fatalf("status of a running program: %+v", st)
	}

	vm := f.be.VMs()[0]
	if code, doc := f.call(t, "POST", "/v1/programs/web/stop", ""); code != 200 || doc["running"] != false || !vm.Ended() || !vm.GoneAway() {
		t.Fatalf("stop: %d %v, VM ended %v", code, doc, vm.Ended())
	}
	if code, doc := f.call(t, "POST", "/v1/programs/web/restart", ""); code != 200 || doc["running"] != true || f.be.Boots() != 2 {
		t.Fatalf("restart: %d %v, %d boots", code, doc, f.be.Boots())
	}
	if code, doc := f.call(t, "DELETE", "/v1/programs/web", ""); code != 200 || doc["deleted"] != "web" || f.be.Live() != 0 {
		t.Fatalf("delete: %d %v, %d VMs live", code, doc, f.be.Live())
	}
	if err := f.client.Do("GET", "/v1/programs", nil, &list); err != nil || len(list) != 0 {
		t.Fatalf("list after delete: %+v %v", list, err)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/programs/web"}, {"POST", "/v1/programs/web/stop"}, {"POST", "/v1/programs/web/restart"},
		{"DELETE", "/v1/programs/web"}, {"GET", "/v1/programs/web/logs"},
	} {
		if code, doc := f.call(t, c.method, c.path, ""); code != http.StatusNotFound || doc["error"] != "no such program" {
			t.Errorf("%s %s of an unknown program: %d %v", c.method, c.path, code, doc)
		}
	}
}

// A deploy the API refuses says why, naming the manifest's field; a
// persistent program deployed over the API starts at once.
func TestDeployErrorsNameTheField(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{}, "", "")
	for _, c := range []struct {
		id, doc string
		status  int
		want    string
	}{
		{"a", `{"code": `, http.StatusBadRequest, "manifest: "},
		{"a", `{"colour": "blue"}`, http.StatusBadRequest, `manifest: json: unknown field "colour"`},
		{"a", `{"code": {"entrypoint": "m:a", "interface": "asgi", "path": "rel"}, "on": {"http": true}}`, http.StatusBadRequest, "programs.a.code.path: must be absolute"},
		{"a", strings.Replace(f.manifest(""), `"asgi"`, `"wsgi"`, 1), http.StatusBadRequest, "programs.a.code.interface: "},
		{"a", strings.Replace(f.manifest(""), `"http": true`, `"http": false`, 1), http.StatusBadRequest, "programs.a.on: "},
		{"a", f.manifest(`, "resources": {"seconds": -1}`), http.StatusBadRequest, "programs.a.resources: "},
		{"Bad_ID", f.manifest(""), http.StatusBadRequest, "programs.Bad_ID: "},
	} {
		code, doc := f.call(t, "PUT", "/v1/programs/"+c.id, c.doc)
		if msg, _ := doc["error"].(string); code != c.status || !strings.HasPrefix(msg, c.want) {
			t.Errorf("deploy %s %s: %d %q, want %d %q", c.id, c.doc, code, msg, c.status, c.want)
		}
	}
	persistent := strings.Replace(f.manifest(""), `"on": {"http": true}`, `"on": {"http": false, "persistent": true}`, 1)
	if code, _ := f.call(t, "PUT", "/v1/programs/p", persistent); code != http.StatusCreated {
		t.Fatalf("deploy of a persistent program: %d", code)
	}
	if code, doc := f.call(t, "PUT", "/v1/programs/p", f.manifest("")); code != http.StatusConflict || !strings.Contains(doc["error"].(string), "already deployed") {
		t.Fatalf("duplicate deploy: %d %v", code, doc)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.manager.Instance("p") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the persistent program deployed over the API did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The logs are the program's output lines, with their source, origin
// and time.
func TestLogs(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{Logs: 3}, "", "")
	if code, _ := f.call(t, "PUT", "/v1/programs/talk", f.manifest("")); code != http.StatusCreated {
		t.Fatal(code)
	}
	inst, err := f.manager.Acquire(context.Background(), f.programs.Route("talk").Program)
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
	f.be.VMs()[0].Log("stderr", "Traceback: oops")
	var lines []LogLine
	deadline := time.Now().Add(10 * time.Second)
	for len(lines) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("logs: %+v", lines)
		}
		time.Sleep(5 * time.Millisecond)
		if err := f.client.Do("GET", "/v1/programs/talk/logs", nil, &lines); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"stdout line 0", "stdout line 1", "stdout line 2", "stderr Traceback: oops"}
	for i, l := range lines {
		if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil || l.Source+" "+l.Line != want[i] {
			t.Errorf("line %d: %+v, want %q", i, l, want[i])
		}
	}
}

// On TCP the API needs a token, and every call must carry it; the
// client sends it as a bearer token.
func TestTCPNeedsABearerToken(t *testing.T) {
	if _, err := Listen("127.0.0.1:0", ""); err == nil || !strings.Contains(err.Error(), "needs a token") {
		t.Fatalf("TCP without a token: %v", err)
	}
	f := newAPI(t, &backendtest.Backend{}, "127.0.0.1:0", "s3cret")
	var list []Status
	if err := f.client.Do("GET", "/v1/programs", nil, &list); err != nil {
		t.Fatalf("with the token: %v", err)
	}
	for _, token := range []string{"", "wrong"} {
		if err := NewClient(f.addr, token).Do("GET", "/v1/programs", nil, &list); err == nil || !strings.Contains(err.Error(), "missing or wrong admin token") {
			t.Errorf("token %q: %v", token, err)
		}
	}
}

// A second agent cannot take the socket of one that serves; a stale
// socket of one that is gone is replaced, owner-only.
func TestListenOnAUnixSocket(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{}, "", "")
	if _, err := Listen(f.addr, ""); err == nil || !strings.Contains(err.Error(), "another agent is serving") {
		t.Fatalf("a second agent on the socket: %v", err)
	}
	stale := filepath.Join(t.TempDir(), "run", "agent.sock")
	os.MkdirAll(filepath.Dir(stale), 0o755)
	os.WriteFile(stale, nil, 0o644)
	l, err := Listen(stale, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, err := os.Stat(stale); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
}

// host-agent program: the client's commands and what they print.
func TestCommand(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{Logs: 1}, "", "")
	manifest := filepath.Join(t.TempDir(), "web.json")
	os.WriteFile(manifest, []byte(f.manifest("")), 0o644)
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := Command(append([]string{"--admin", f.addr}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	for _, c := range []struct {
		args []string
		code int
		out  string // part of stdout, or of stderr when code is not 0
	}{
		{[]string{"deploy", "web", manifest}, 0, "deployed web (asgi main:app)"},
		{[]string{"list"}, 0, "web  asgi       main:app    true  false       false"},
		{[]string{"restart", "web"}, 0, "running:    true"},
		{[]string{"status", "web", "--json"}, 0, `"running": true`},
		{[]string{"logs", "web"}, 0, "stdout[0] line 0"},
		{[]string{"logs", "--since", "1h", "web"}, 0, "stdout[0] line 0"},
		{[]string{"logs", "--since", "soon", "web"}, 2, "invalid value"},
		{[]string{"stop", "web"}, 0, "running:    false"},
		{[]string{"delete", "web"}, 0, "deleted:    web"},
		{[]string{"status", "web"}, 1, "host-agent: no such program"},
		{[]string{"status"}, 2, "usage: host-agent program"},
		{[]string{"fly", "web"}, 2, "usage: host-agent program"},
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"--admin", filepath.Join(t.TempDir(), "none.sock"), "list"}, 1, "cannot reach the agent's admin API"},
	} {
		code, stdout, stderr := run(c.args...)
		// A VM's lines reach the logs through a pump of their own
		// (lifecycle's outputPump): they may follow the restart by a
		// moment on a busy machine.
		for deadline := time.Now().Add(10 * time.Second); c.args[0] == "logs" && code == 0 && !strings.Contains(stdout, c.out) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			code, stdout, stderr = run(c.args...)
		}
		got := stdout
		if c.code != 0 {
			got = stderr
		}
		if code != c.code || !strings.Contains(got, c.out) {
			t.Errorf("program %v: %d\n%s%s\nwant %d and %q", c.args, code, stdout, stderr, c.code, c.out)
		}
	}
}

// Volumes the disk cannot hold are refused at deploy (507, naming them
// and the free space) and nothing is deployed; when the disk fills after
// the deploy, the boot fails and the program's status says why, until a
// boot succeeds.
func TestVolumesBeyondTheFreeSpace(t *testing.T) {
	var avail atomic.Uint64
	avail.Store(2 << 30) // on a 100 GiB disk: 1 GiB reserve, 1 GiB for volumes
	be := &backendtest.Backend{Space: func(string) (backend.FSSpace, error) {
		return backend.FSSpace{Dev: 1, Avail: avail.Load(), Total: 100 << 30}, nil
	}}
	f := newAPI(t, be, "", "")
	big := f.manifest(`, "volumes": [{"mount": "/state", "persistent": true, "size_mib": 600}, {"mount": "/scratch", "ephemeral": true, "size_mib": 600}]`)
	code, doc := f.call(t, "PUT", "/v1/programs/big", big)
	msg, _ := doc["error"].(string)
	if code != http.StatusInsufficientStorage || !strings.HasPrefix(msg, "programs.big: persistent volumes[0] (/state) of 600 MiB and ephemeral volumes[1] (/scratch) of 600 MiB, 1200 MiB together, do not fit") ||
		!strings.Contains(msg, "has 2048 MiB free, of which 1024 MiB stay free") {
		t.Fatalf("deploy of volumes beyond the free space: %d %q", code, msg)
	}
	if code, _ := f.call(t, "GET", "/v1/programs/big", ""); code != http.StatusNotFound {
		t.Fatalf("the refused program was deployed: %d", code)
	}

	fits := f.manifest(`, "volumes": [{"mount": "/scratch", "ephemeral": true, "size_mib": 600}]`)
	if code, doc := f.call(t, "PUT", "/v1/programs/fits", fits); code != http.StatusCreated {
		t.Fatalf("deploy of a volume that fits: %d %v", code, doc)
	}
	avail.Store(1 << 30) // the disk filled since
	route := f.programs.Route("fits")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.manager.Acquire(ctx, route.Program); err == nil || !strings.Contains(err.Error(), "ephemeral volumes[0] (/scratch) of 600 MiB does not fit") {
		t.Fatalf("a boot with the disk full: %v", err)
	}
	_, doc = f.call(t, "GET", "/v1/programs/fits", "")
	if msg, _ := doc["last_boot_error"].(string); !strings.Contains(msg, "does not fit on the host's disk") || doc["last_boot_error_at"] == nil {
		t.Fatalf("the status does not say why the boot failed: %v", doc)
	}
	avail.Store(2 << 30)
	inst, err := f.manager.Acquire(ctx, route.Program)
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
	if _, doc = f.call(t, "GET", "/v1/programs/fits", ""); doc["last_boot_error"] != nil || doc["running"] != true {
		t.Fatalf("after a boot that succeeded: %v", doc)
	}
}
