package front

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
)

// limitedServer serves h on loopback under lim.
func limitedServer(t *testing.T, lim ConnLimits, h http.Handler) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	lim.Apply(srv.Config)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// dial connects to addr, giving up after 5 s; the connection is closed
// with the test.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reads c until it is closed, failing when that takes longer
// than patience; it returns what was read.
func closedWithin(t *testing.T, c net.Conn, patience time.Duration, what string) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(patience))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%s: the connection was not closed within %s (%v); read %q", what, patience, err, got)
	}
	return string(got)
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })

// An idle keep-alive connection is closed after Keepalive; a request head
// that does not arrive within Header is closed too.
func TestConnLimitsCloseIdleAndSlowHeads(t *testing.T) {
	t.Parallel()
	addr := limitedServer(t, ConnLimits{Keepalive: 300 * time.Millisecond, Header: 300 * time.Millisecond}, okHandler)

	idle := dial(t, addr)
	fmt.Fprint(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 || resp.Close {
		t.Fatalf("first request: %v %+v", err, resp)
	}
	io.ReadAll(resp.Body)
	closedWithin(t, idle, 10*time.Second, "idle keep-alive connection")

	slow := dial(t, addr)
	fmt.Fprint(slow, "GET / HTTP/1.1\r\nHost: x\r\n") // and never the end of the head
	closedWithin(t, slow, 10*time.Second, "slow request head")
}

// A request body that stops arriving ends the request with 408 and a
// closed connection; the handler's read fails instead of waiting. A slow
// but steady one is read whole, and a response with pauses longer than
// the timeouts between its writes is sent whole: the timeouts bound each
// wait, not the exchange.
func TestConnLimitsBodyTimeout(t *testing.T) {
	t.Parallel()
	t.Run("stalled", testStalledBody)
	t.Run("steady", testSteadyExchange)
}

func testStalledBody(t *testing.T) {
	t.Parallel()
	readErr := make(chan error, 1)
	addr := limitedServer(t, ConnLimits{Body: 300 * time.Millisecond}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
	}))
	c := dial(t, addr)
	fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	got := closedWithin(t, c, 10*time.Second, "stalled upload")
	if !strings.HasPrefix(got, "HTTP/1.1 408 ") || !strings.Contains(got, "request_id") {
		t.Fatalf("stalled upload answered %q", got)
	}
	if err := <-readErr; err == nil {
		t.Fatal("the handler read the stalled body without an error")
	}
}

func testSteadyExchange(t *testing.T) {
	t.Parallel()
	lim := ConnLimits{Body: 400 * time.Millisecond, Send: 400 * time.Millisecond}
	addr := limitedServer(t, lim, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("steady upload: %v", err)
			return
		}
		for i := range 3 {
			fmt.Fprintf(w, "%s %d\n", body, i)
			w.(http.Flusher).Flush()
			time.Sleep(600 * time.Millisecond)
		}
	}))
	c := dial(t, addr)
	fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
	for _, b := range "hello" { // 5 bytes over 1 s: each gap under the timeout
		time.Sleep(200 * time.Millisecond)
		fmt.Fprintf(c, "%c", b)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil || string(got) != "hello 0\nhello 1\nhello 2\n" {
		t.Fatalf("response %q %v", got, err)
	}
}

// A client that stops reading a response makes the handler's write fail
// after Send, instead of holding it; a hijacked connection (a websocket)
// is not bound by the send timeout.
func TestConnLimitsSendTimeout(t *testing.T) {
	t.Parallel()
	t.Run("stopped-reading", testClientStopsReading)
	t.Run("hijacked", testHijackedSpared)
}

func testClientStopsReading(t *testing.T) {
	t.Parallel()
	writeErr := make(chan error, 1)
	addr := limitedServer(t, ConnLimits{Send: 300 * time.Millisecond}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for range 4096 { // 256 MiB: far more than the socket buffers
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}))
	c := dial(t, addr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // and never read
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("256 MiB written to a client that reads nothing")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler's write is still blocked")
	}
}

func testHijackedSpared(t *testing.T) {
	t.Parallel()
	addr := limitedServer(t, ConnLimits{Send: 200 * time.Millisecond}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		time.Sleep(600 * time.Millisecond)
		conn.Write([]byte("still here"))
	}))
	c := dial(t, addr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
	got := closedWithin(t, c, 10*time.Second, "hijacked connection")
	if !strings.HasSuffix(got, "still here") {
		t.Fatalf("hijacked connection got %q", got)
	}
}

// Past its limit, a request waits for the queue timeout, then gets 503
// with Retry-After; a slot given back lets a waiting request in.
func TestLimiter(t *testing.T) {
	l := NewLimiter(RequestLimits{MaxConcurrent: 2, QueueTimeout: 100 * time.Millisecond})
	ctx := context.Background()
	if !l.Acquire(ctx) || !l.Acquire(ctx) {
		t.Fatal("slots under the limit refused")
	}
	if l.Acquire(ctx) {
		t.Fatal("a third slot of two")
	}
	go func() { time.Sleep(20 * time.Millisecond); l.Release() }()
	big := NewLimiter(RequestLimits{MaxConcurrent: 1, QueueTimeout: 10 * time.Second})
	big.Acquire(ctx)
	go func() { time.Sleep(20 * time.Millisecond); big.Release() }()
	if !big.Acquire(ctx) {
		t.Fatal("a slot given back did not let the waiting request in")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if big.Acquire(cctx) {
		t.Fatal("a request whose client left got a slot")
	}
	one := NewLimiter(RequestLimits{MaxConcurrent: 1})
	if !one.TryAcquire() || one.TryAcquire() {
		t.Fatal("TryAcquire: not one slot of one")
	}
	one.Release()
	if !one.TryAcquire() {
		t.Fatal("TryAcquire: a slot given back is not free")
	}
	if d := NewLimiter(RequestLimits{}); cap(d.slots) != DefaultMaxConcurrent || d.wait != DefaultQueueTimeout {
		t.Fatalf("defaults: %d %s", cap(d.slots), d.wait)
	}
}

// The router answers a program at its limit with 503 and Retry-After at
// once, even while the request's body trickles; /metrics is not served
// on the public listener, /healthz is (without program ids).
func TestRouterAtTheLimit(t *testing.T) {
	ps := NewPrograms(lifecycle.New(lifecycle.Options{IdleTimeout: -1}))
	ps.Limits = RequestLimits{MaxConcurrent: 1, QueueTimeout: 50 * time.Millisecond}
	if err := ps.Deploy("busy", &manifest.Program{Code: manifest.Code{Interface: "asgi", Entrypoint: "m:a", Path: "/nonexistent"}, On: manifest.On{HTTP: true}}); err != nil {
		t.Fatal(err)
	}
	ps.Route("busy").Limiter.Acquire(context.Background()) // the one slot is taken
	addr := limitedServer(t, ConnLimits{}, &Router{Programs: ps, Manager: ps.Manager})

	c := dial(t, addr)
	fmt.Fprint(c, "POST /vm/busy/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab") // the rest never comes
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer while the body trickles: %v", err)
	}
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !resp.Close {
		t.Fatalf("at the limit: %d Retry-After %q close %v", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close)
	}

	for path, want := range map[string]int{"/metrics": 404, "/healthz": 200} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || strings.Contains(string(body), "busy") {
			t.Errorf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
}
