package tests

// A careless or broken supervisor on the reference protocol (issue 19,
// review of session 7): documents that lie about their lengths or nest
// without end, connections that stall after their first byte or send
// nothing, bytes no instruction begins with. init answers what it can,
// keeps serving the other connections, and still halts and exits with
// the stalled connections open.

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestAlephHostileConnections(t *testing.T) {
	g := startAlephGuest(t)
	g.sup.waitForInit(t, g.readyL)
	if reply := g.sup.configure(t, configDoc("2.0.0", "plain", []byte(alephApp), "main:app", nil)); reply["success"] != true {
		t.Fatalf("configuration failed: %v", reply)
	}
	dial := func() net.Conn {
		c, err := net.Dial("unix", g.guest)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		return c
	}
	raw := func(payload []byte) net.Conn {
		c := dial()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Stalled: nothing, one byte of a length line, one byte of a run
	// request, Ferry's HELLO type byte alone.
	for _, p := range [][]byte{nil, []byte("1"), {0x81}, {0x01}} {
		raw(p)
	}
	deep := append([]byte("\x81\xa5scope\x81\xa1x"), bytes.Repeat([]byte{0x91}, 10_000_000)...)
	for name, p := range map[string][]byte{
		"2^32 headers":              []byte("\x81\xa5scope\x81\xa7headers\xdd\xff\xff\xff\xff"),
		"ten million levels":        append(deep, 0xc0),
		"a byte msgpack never uses": {0x81, 0xc1, 0, 0}, // a map, then 0xc1
		"a length of 2^32":          []byte("4294967296\n"),
		"a lying length line":       []byte("99999999\n\x80"),
	} {
		// init may answer and close before taking the whole document:
		// the answer is read as it comes.
		c := dial()
		type answer struct {
			out []byte
			err error
		}
		got := make(chan answer, 1)
		go func() {
			out, err := io.ReadAll(c)
			got <- answer{out, err}
		}()
		c.Write(p)
		c.(*net.UnixConn).CloseWrite()
		a := <-got
		out := a.out
		if len(out) == 0 {
			t.Fatalf("%s: no answer (%v)", name, a.err)
		}
		var doc map[string]any
		if err := msgpack.Unmarshal(out, &doc); err != nil || (doc["error"] == nil && doc["success"] != false) {
			t.Errorf("%s: answered %q (%v), want an error document", name, out, err)
		}
	}
	select {
	case <-g.done:
		t.Fatalf("init ended: %v", g.err)
	default:
	}
	if r := g.sup.runCode(t, "GET", "/", "", nil, nil); r.status != 200 || string(r.body) != `{"hello":"aleph"}` {
		t.Fatalf("a request after the hostile ones: %d %s", r.status, r.body)
	}
	haltAndExit(t, g)
}

// A halt while requests are in flight: each request ends (answered, or
// its connection closed: the supervisor's 502), the halt is answered and
// init exits; a request after the halt is answered or closed too.
func TestAlephHaltDuringRequests(t *testing.T) {
	g := startAlephGuest(t)
	g.sup.waitForInit(t, g.readyL)
	if reply := g.sup.configure(t, configDoc("2.0.0", "plain", []byte(alephApp), "main:app", nil)); reply["success"] != true {
		t.Fatalf("configuration failed: %v", reply)
	}
	slow, err := msgpack.Marshal(map[string]any{"scope": map[string]any{"type": "http", "path": "/slow", "method": "GET", "headers": [][][]byte{}, "body": []byte{}}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	ended := make(chan error, n)
	for range n {
		c, br := g.sup.dial(t, slow)
		go func() {
			defer c.Close()
			_, err := io.ReadAll(br)
			ended <- err
		}()
	}
	time.Sleep(100 * time.Millisecond) // the requests reach the app (not asserted)
	halt(t, g)
	for range n {
		if err := <-ended; err != nil {
			t.Errorf("a request in flight at the halt: %v", err)
		}
	}
	waitExit(t, g)
}

// A halt while the configuration is still being applied (the app still
// starting: the supervisor gave up waiting) stops what the configuration
// starts: when STOPZ comes the app's process is gone (under PID 1, its
// volumes are unmounted by then too), not left to start after the halt.
func TestAlephHaltDuringConfiguration(t *testing.T) {
	g := startAlephGuest(t)
	g.sup.waitForInit(t, g.readyL)
	pidFile := filepath.Join(t.TempDir(), "app.pid")
	slowApp := "import os, time\nopen(" + strconv.Quote(pidFile) + ", 'a').write(str(os.getpid()) + '\\n')\ntime.sleep(5)\n" + alephApp
	configured := make(chan map[string]any, 1)
	go func() {
		payload, _ := msgpack.Marshal(configDoc("2.0.0", "plain", []byte(slowApp), "main:app", nil))
		c, err := net.Dial("unix", g.guest)
		if err != nil {
			configured <- nil
			return
		}
		defer c.Close()
		c.Write(append([]byte(strconv.Itoa(len(payload))+"\n"), payload...))
		raw, _ := io.ReadAll(c)
		var reply map[string]any
		msgpack.Unmarshal(raw, &reply)
		configured <- reply
	}()
	var pids []int
	for deadline := time.Now().Add(2 * time.Minute); len(pids) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the app never started")
		}
		b, _ := os.ReadFile(pidFile)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	halt(t, g)
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("the app's process %d still runs after STOPZ", pid)
		}
	}
	t.Logf("configuration reply: %v", <-configured)
	waitExit(t, g)
}

// halt sends the supervisor's halt and checks its answer.
func halt(t *testing.T, g *alephGuest) {
	t.Helper()
	if _, msg2 := g.sup.shutdown(t); msg2 != "STOPZ\n" {
		t.Fatalf("halt answered %q", msg2)
	}
}

// waitExit waits for init to exit after a halt.
func waitExit(t *testing.T, g *alephGuest) {
	t.Helper()
	select {
	case <-g.done:
	case <-time.After(90 * time.Second):
		t.Fatal("init did not exit after the halt")
	}
}

// haltAndExit halts init and waits for it to exit.
func haltAndExit(t *testing.T, g *alephGuest) {
	t.Helper()
	halt(t, g)
	waitExit(t, g)
}
