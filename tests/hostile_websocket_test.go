package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsHostileApp accepts websockets. On /echo it sends every message back;
// on any other path it never calls receive: messages sent to it wait
// under flow control until GET /release makes every such websocket close
// (1000, "released") without having read anything.
const wsHostileApp = `
import asyncio

release = None


async def app(scope, receive, send):
    global release
    if release is None:
        release = asyncio.Event()
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        release.set()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"released"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if scope["path"] == "/echo":
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                return
            if m.get("text") is not None:
                await send({"type": "websocket.send", "text": m["text"]})
            else:
                await send({"type": "websocket.send", "bytes": m["bytes"]})
    await release.wait()
    await send({"type": "websocket.close", "code": 1000, "reason": "released"})
`

// wsHostileProc is a process of the agent's tree whose memory the test
// watches.
type wsHostileProc struct {
	name string
	pid  int
}

// wsHostileStatusKiB reads a "VmXXX:  N kB" line of /proc/PID/status.
func wsHostileStatusKiB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// wsHostileFindProcs finds the host-agent listening on addr, the init
// below it (a descendant named init, however the backend spawns it) and
// the Python workers below that.
func wsHostileFindProcs(t *testing.T, addr string) (agent, init wsHostileProc, workers []wsHostileProc) {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	parent := map[int]int{}
	comm := map[int]string{}
	agentPID := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		parent[pid], _ = strconv.Atoi(f[1])
		comm[pid] = s[strings.IndexByte(s, '(')+1 : i]
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmdline, []byte("--listen\x00"+addr+"\x00")) && strings.HasSuffix(strings.Split(string(cmdline), "\x00")[0], "host-agent") {
			agentPID = pid
		}
	}
	if agentPID == 0 {
		t.Fatalf("no host-agent process listening on %s", addr)
	}
	below := func(pid, ancestor int) bool {
		for p := parent[pid]; p > 1; p = parent[p] {
			if p == ancestor {
				return true
			}
		}
		return false
	}
	agent = wsHostileProc{"host-agent", agentPID}
	for pid, c := range comm {
		if c == "init" && below(pid, agentPID) {
			init = wsHostileProc{"init", pid}
		}
	}
	if init.pid == 0 {
		t.Fatalf("no init below host-agent %d", agentPID)
	}
	for pid, c := range comm {
		if strings.HasPrefix(c, "python") && below(pid, init.pid) {
			workers = append(workers, wsHostileProc{"worker", pid})
		}
	}
	return agent, init, workers
}

// wsHostileSockets counts the sockets a process has open.
func wsHostileSockets(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

// wsHostileCountingConn counts the bytes a client managed to write.
type wsHostileCountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c wsHostileCountingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// 30 websockets each send one 16 MiB message to an app that never reads:
// the messages wait under flow control, so the agent's and init's memory
// stays bounded by their windows (not by message size × connections), and
// what they hold is released once the websockets close. A normal echo
// websocket still carries messages of every size intact.
func TestHostileWebSocketMemoryStaysBounded(t *testing.T) {
	requirePythonModules(t, "asyncio")
	const (
		clients = 30
		msgSize = 16 << 20
		// Each of agent and init must peak below this. The base relays
		// buffered whole messages: 631 MB (agent) and 807 MB (init).
		peakBoundKiB = 128 << 10
		// After the close, what either holds may exceed what it held
		// before the websockets opened by at most this.
		releaseSlackKiB = 48 << 10
	)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.py"), []byte(wsHostileApp), 0o644); err != nil {
		t.Fatal(err)
	}
	addr, _ := runAgent(t, "--workers", "1", dir, "app:app")
	agent, init, workers := wsHostileFindProcs(t, addr)
	procs := []wsHostileProc{agent, init}
	rss := func(p wsHostileProc) int {
		v, err := wsHostileStatusKiB(p.pid, "VmRSS")
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		return v
	}
	before := map[string]int{}
	for _, p := range procs {
		before[p.name] = rss(p)
	}
	t.Logf("before: host-agent %d KiB, init %d KiB", before["host-agent"], before["init"])

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var (
		written atomic.Int64
		lastTCP *net.TCPConn // the connection of the websocket being dialled
	)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, a)
		if err != nil {
			return nil, err
		}
		lastTCP = c.(*net.TCPConn)
		return wsHostileCountingConn{c, &written}, nil
	}}}
	msg := bytes.Repeat([]byte("0123456789abcdef"), msgSize/16)
	var (
		wg     sync.WaitGroup
		sent   atomic.Int32
		conns  [clients]*websocket.Conn
		tcps   [clients]*net.TCPConn
		closes [clients]string
	)
	for i := range clients {
		c, _, err := websocket.Dial(ctx, "ws://"+addr+"/sink/"+strconv.Itoa(i), &websocket.DialOptions{HTTPClient: hc})
		if err != nil {
			t.Fatalf("websocket %d: %v", i, err)
		}
		defer c.CloseNow()
		conns[i], tcps[i] = c, lastTCP
		wg.Add(2)
		go func() {
			// The send blocks under backpressure until the app closes.
			defer wg.Done()
			if err := c.Write(ctx, websocket.MessageBinary, msg); err == nil {
				sent.Add(1)
			}
		}()
		go func() {
			// The reader sees the app's close.
			defer wg.Done()
			_, _, err := c.Read(ctx)
			closes[i] = fmt.Sprintf("%d %s", websocket.CloseStatus(err), wsHostileCloseReason(err))
		}()
	}

	// Sample while the messages are in flight: until the clients' sends
	// are done (the relays took whole messages) or nothing more moved for
	// 3 s (windows and socket buffers full), and neither process reached
	// a new peak for 3 s.
	peakRSS := map[string]int{}
	last := int64(-1)
	lastMove, lastPeak := time.Now(), time.Now()
	for ctx.Err() == nil {
		for _, p := range procs {
			if v := rss(p); v > peakRSS[p.name] {
				peakRSS[p.name], lastPeak = v, time.Now()
			}
		}
		if n := written.Load(); n != last {
			last, lastMove = n, time.Now()
		}
		if (sent.Load() == clients || time.Since(lastMove) > 3*time.Second) && time.Since(lastPeak) > 3*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	hwm := map[string]int{}
	for _, p := range procs {
		v, err := wsHostileStatusKiB(p.pid, "VmHWM")
		if err != nil {
			t.Fatal(err)
		}
		hwm[p.name] = v
	}
	t.Logf("in flight: %d of %d MiB written by the clients, %d of %d sends complete", written.Load()>>20, clients*msgSize>>20, sent.Load(), clients)
	t.Logf("peak RSS (VmHWM): host-agent %d KiB, init %d KiB (largest sampled VmRSS: %d, %d KiB)",
		hwm["host-agent"], hwm["init"], peakRSS["host-agent"], peakRSS["init"])
	for _, w := range workers {
		if v, err := wsHostileStatusKiB(w.pid, "VmHWM"); err == nil {
			t.Logf("worker %d peak RSS (VmHWM): %d KiB", w.pid, v)
		}
	}
	for _, p := range procs {
		if hwm[p.name] > peakBoundKiB {
			t.Errorf("%s peaked at %d KiB with %d × %d MiB messages in flight (bound %d KiB): messages were buffered whole",
				p.name, hwm[p.name], clients, msgSize>>20, peakBoundKiB)
		}
	}

	// Half the clients vanish mid-message (their connections reset): the
	// agent notices although it reads nothing from them, and lets go of
	// their connections and streams.
	sockets := wsHostileSockets(t, agent.pid)
	for i := 0; i < clients; i += 2 {
		tcps[i].SetLinger(0)
		conns[i].CloseNow()
	}
	left := time.Now()
	waitFor(t, time.Minute, func() bool { return wsHostileSockets(t, agent.pid) <= sockets-clients/2 },
		"host-agent still holds the connections of clients that left")
	t.Logf("the agent let go of the %d connections whose clients left in %v (sockets %d -> %d)", clients/2, time.Since(left).Round(time.Millisecond), sockets, wsHostileSockets(t, agent.pid))

	// The app closes the other websockets without reading; their clients
	// see the close, and the memory is given back.
	if body := curl(t, "http://"+addr+"/release"); body != "released" {
		t.Fatalf("release: %q", body)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	released := time.Now()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("websockets still open 2 minutes after the app closed them")
	}
	t.Logf("the app's closes reached the clients in %v", time.Since(released).Round(time.Millisecond))
	for i := 1; i < clients; i += 2 {
		if closes[i] != "1000 released" {
			t.Errorf("client %d saw the close as %q, want 1000 released", i, closes[i])
		}
	}
	after := map[string]int{}
	waitFor(t, time.Minute, func() bool {
		released := true
		for _, p := range procs {
			after[p.name] = rss(p)
			released = released && after[p.name] <= before[p.name]+releaseSlackKiB
		}
		return released
	}, "memory held after the websockets closed")
	t.Logf("after the close: host-agent %d KiB, init %d KiB", after["host-agent"], after["init"])

	// A normal websocket still works, with messages of every size.
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(msgSize)
	for _, size := range []int{1, 100 << 10, 15 << 20} {
		for _, typ := range []websocket.MessageType{websocket.MessageText, websocket.MessageBinary} {
			m := bytes.Repeat([]byte("ferry websocket "), size/16+1)[:size]
			m[0] = byte('a' + size%26)
			if err := c.Write(ctx, typ, m); err != nil {
				t.Fatalf("echo write of %d bytes (%v): %v", size, typ, err)
			}
			gotTyp, got, err := c.Read(ctx)
			if err != nil || gotTyp != typ || !bytes.Equal(got, m) {
				t.Fatalf("echo of %d bytes (%v): got %v, %d bytes, equal %v, %v", size, typ, gotTyp, len(got), bytes.Equal(got, m), err)
			}
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("echo close: %v", err)
	}
}

// wsHostileCloseReason is the reason of a websocket close error, if err is one.
func wsHostileCloseReason(err error) string {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err.Error()
	}
	return ""
}
