package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// notifySocket is the service manager's end of NOTIFY_SOCKET: a unixgram
// socket the agent under test sends its states to.
type notifySocket struct {
	conn *net.UnixConn
}

// listenNotify makes NOTIFY_SOCKET a socket of the test's for as long as
// the test runs.
func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &notifySocket{conn: conn}
}

// next returns the next state sent within patience, or "" if none came.
func (n *notifySocket) next(t *testing.T, patience time.Duration) string {
	t.Helper()
	buf := make([]byte, 4096)
	n.conn.SetReadDeadline(time.Now().Add(patience))
	k, err := n.conn.Read(buf)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return ""
		}
		t.Fatal(err)
	}
	return string(buf[:k])
}

// await returns the next state, failing the test if none comes.
func (n *notifySocket) await(t *testing.T, want string) string {
	t.Helper()
	got := n.next(t, 20*time.Second)
	if !strings.Contains(got, want) {
		t.Fatalf("the service manager heard %q, want %q", got, want)
	}
	return got
}

// READY=1 goes to the service manager only once the agent serves: not
// while run's program still boots (its listener is open but nothing
// serves it yet), and at once after, when a request is answered.
func TestReadyOnlyOnceServing(t *testing.T) {
	notify := listenNotify(t)
	cfg, err := flagConfig(t, RunFlags, "--listen", "127.0.0.1:0", t.TempDir(), "main:app")
	if err != nil {
		t.Fatal(err)
	}
	be := &backendtest.Backend{Handler: backendtest.Echo, Gate: make(chan struct{})}
	a := start(t, cfg, be)
	select {
	case <-be.Started():
	case <-time.After(20 * time.Second):
		t.Fatal("the program's VM was not started")
	}
	if got := notify.next(t, 300*time.Millisecond); got != "" {
		t.Fatalf("the service manager heard %q while the program was still booting", got)
	}
	close(be.Gate)
	state := notify.await(t, "READY=1")
	if !strings.Contains(state, "STATUS=serving on http://127.0.0.1:") {
		t.Errorf("ready without the status line: %q", state)
	}
	fields := strings.Fields(a.stdout.line(t, "ferry: serving "))
	url := strings.TrimSuffix(fields[len(fields)-1], "/")
	if status, _ := get(t, url+"/x"); status != 200 {
		t.Fatalf("just after READY=1: %d", status)
	}
	a.wait(t)
	notify.await(t, "STOPPING=1")
}

// Stopping (SIGTERM) drains: a request in flight is answered by its
// running VM, which is told to go away only after.
func TestStopDrainsThenStopsVMs(t *testing.T) {
	notify := listenNotify(t)
	cfg, err := flagConfig(t, RunFlags, "--listen", "127.0.0.1:0", t.TempDir(), "main:app")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	be := &backendtest.Backend{Handler: func(st *mux.Stream) {
		var h message.RequestHead
		if err := st.RequestHead(&h); err != nil {
			st.Reset(frame.CodeProtocol, "bad head")
			return
		}
		close(entered)
		<-release
		st.WriteResponse(&message.ResponseHead{Status: 200}, []byte("finished"), true)
	}}
	a, url := serving(t, cfg, be, "ferry: serving main:app", "/")
	notify.await(t, "READY=1")
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get(url + "/slow")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-entered
	a.stop() // what SIGTERM does
	notify.await(t, "STOPPING=1")
	vm := be.VMs()[0]
	if vm.GoneAway() {
		t.Fatal("the VM was stopped with a request in flight")
	}
	close(release)
	if status := <-answered; status != 200 {
		t.Fatalf("the request in flight got %d, want 200", status)
	}
	if err := a.wait(t); err != nil {
		t.Fatal(err)
	}
	if !vm.GoneAway() || !vm.Ended() {
		t.Fatal("the VM was not stopped after the drain")
	}
}

// SIGHUP re-reads serve's configuration: programs added, changed and
// removed are applied and reported, a setting that needs a restart is
// reported as such, and a file that does not load changes nothing.
func TestReloadAppliesTheConfiguration(t *testing.T) {
	notify := listenNotify(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "agent.json")
	write := func(doc string) {
		t.Helper()
		if err := os.WriteFile(config, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"programs": {
		"kept":    {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "kept"}, "on": {"http": true}},
		"changed": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "before"}, "on": {"http": true}},
		"removed": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "removed"}, "on": {"http": true}}}}`)
	cfg, err := flagConfig(t, ServeFlags, "--config", config, "--listen", "127.0.0.1:0", "--admin", filepath.Join(dir, "admin.sock"),
		"--state-dir", filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	cfg.Reload = hup
	be := &backendtest.Backend{Handler: backendtest.Echo}
	a, url := serving(t, cfg, be, "ferry: serving 3 programs", "/vm/{program}/")
	notify.await(t, "READY=1")
	for _, id := range []string{"kept", "changed", "removed"} {
		if status, _ := get(t, url+"/vm/"+id+"/"); status != 200 {
			t.Fatalf("%s before the reload: %d", id, status)
		}
	}

	write(`{"listen": "127.0.0.1:1", "programs": {
		"kept":    {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "kept"}, "on": {"http": true}},
		"changed": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "after"}, "on": {"http": true}},
		"added":   {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "added"}, "on": {"http": true}}}}`)
	hup <- syscall.SIGHUP
	notify.await(t, "RELOADING=1")
	if state := notify.await(t, "READY=1"); !strings.Contains(state, "\nSTATUS=configuration reloaded: 3 programs from the file; serving on http://127.0.0.1:") {
		t.Errorf("after the reload the service manager heard %q", state)
	}
	logged := waitLog(t, a, "configuration reloaded")
	for _, want := range []string{"added=[added]", "changed=[changed]", "removed=[removed]", "unchanged=1", "pending_restart=[listen]"} {
		if !strings.Contains(logged, want) {
			t.Errorf("the reload's report %q lacks %s", logged, want)
		}
	}
	waitLog(t, a, "take effect at the agent's next start")
	if status, _ := get(t, url+"/vm/added/"); status != 200 {
		t.Errorf("the program added: %d", status)
	}
	if status, _ := get(t, url+"/vm/removed/"); status != http.StatusNotFound {
		t.Errorf("the program removed: %d, want 404", status)
	}
	get(t, url+"/vm/changed/")
	var paths []string
	for _, vm := range be.VMs() {
		paths = append(paths, filepath.Base(vm.Spec.CodePath))
	}
	if !strings.Contains(strings.Join(paths, " "), "after") {
		t.Errorf("the program changed was not booted as it now is: VMs of %v", paths)
	}

	// A file that does not load: refused, reported (READY=1 still, the
	// agent serving as it was, with the failure in STATUS= and the log
	// at ERROR), nothing changes.
	write(`{"programs": {"kept": {"code": {"interface": "wsgi"}}}}`)
	hup <- syscall.SIGHUP
	notify.await(t, "RELOADING=1")
	state := notify.await(t, "READY=1")
	status, ok := strings.CutPrefix(state[strings.Index(state, "STATUS="):], "STATUS=")
	if !ok || !strings.HasPrefix(status, "reload failed: ") || !strings.Contains(status, "wsgi") ||
		!strings.HasSuffix(status, "/vm/{program}/ as before") || strings.Contains(status, "\n") {
		t.Errorf("after a refused reload the service manager heard %q", state)
	}
	if l := waitLog(t, a, "the configuration is refused"); !strings.Contains(l, "level=ERROR") {
		t.Errorf("the refusal is not logged as an error: %q", l)
	}
	for _, id := range []string{"kept", "changed", "added"} {
		if status, _ := get(t, url+"/vm/"+id+"/"); status != 200 {
			t.Errorf("%s after a refused reload: %d", id, status)
		}
	}

	// A program id with a NUL and a newline (JSON lets a key hold any
	// character): the error quotes it, and the STATUS= must hold neither
	// (systemd would drop the whole message, READY=1 with it).
	write(`{"programs": {"a\u0000b\nSTATUS=forged": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "x"}, "on": {"http": true}}}}`)
	hup <- syscall.SIGHUP
	notify.await(t, "RELOADING=1")
	state = notify.await(t, "READY=1")
	if !strings.Contains(state, "\nSTATUS=reload failed: ") || strings.ContainsRune(state, 0) || strings.Count(state, "\nSTATUS=") != 1 {
		t.Errorf("after a reload refusing an id with a NUL and a newline the service manager heard %q", state)
	}
}

// The status line after a reload says its outcome on one line, an
// error's cut to maxStatusError bytes at a character.
func TestReloadStatus(t *testing.T) {
	const serving = "serving on http://127.0.0.1:8080/vm/{program}/"
	long := strings.Repeat("é", maxStatusError) // 2 bytes each: a cut falls inside one
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, "configuration reloaded: 2 programs from the file; " + serving},
		{errNothingToReload, "nothing to reload: the agent serves no configuration file; " + serving},
		{errors.New("agent.json: programs.x.code:\n\tinterface \"wsgi\" is not one"),
			"reload failed: agent.json: programs.x.code: interface \"wsgi\" is not one; " + serving + " as before"},
		{fmt.Errorf("%w: %w", errReloadedInPart, errors.Join(errors.New("deploying a: no"), errors.New("deleting b: no"))),
			"reload failed in part: deploying a: no deleting b: no; " + serving + " (the rest as before)"},
		{errors.New(long), "reload failed: " + long[:maxStatusError] + "...; " + serving + " as before"},
		{errors.New("x" + long), "reload failed: x" + long[:maxStatusError-2] + "...; " + serving + " as before"},
		// A NUL makes systemd drop the whole message, READY=1 with it;
		// a STATUS= that is not UTF-8 is ignored; controls are for a
		// terminal.
		{errors.New("programs.a\x00b\x1b]0;x\x07\u009b: bad \xff id"), "reload failed: programs.a b ]0;x : bad \ufffd id; " + serving + " as before"},
	} {
		got := reloadStatus(c.err, 2, serving)
		if got != c.want {
			t.Errorf("after %v:\n got %q\nwant %q", c.err, got, c.want)
		}
		if !utf8.ValidString(got) || strings.ContainsFunc(got, unicode.IsControl) {
			t.Errorf("after %v: a control or a byte not UTF-8 in %q", c.err, got)
		}
	}
}

// waitLog waits for a line of the agent's log containing text.
func waitLog(t *testing.T, a *agentRun, text string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range strings.Split(a.stderr.String(), "\n") {
			if strings.Contains(l, text) {
				return l
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line with %q in:\n%s", text, a.stderr.String())
	return ""
}
