package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/setup"
	"github.com/ferry-vm/ferry/guest/transport"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// named is an app that answers every stream 200 with its name.
type named string

func (n named) Serve(_ context.Context, st *mux.Stream) {
	st.WriteResponse(&message.ResponseHead{Status: 200}, []byte(n), true)
}
func (named) Stop(context.Context) error { return nil }

// hostsFixture is a service serving a unix socket listener, as init does
// on the sandbox.
type hostsFixture struct {
	t    *testing.T
	svc  *Service
	path string
	logs string // init's log file
	code string
}

func newHostsFixture(t *testing.T, opt Options) *hostsFixture {
	t.Helper()
	return newWrappedHostsFixture(t, opt, nil)
}

// newWrappedHostsFixture serves the listener wrap returns (the unix
// listener itself when wrap is nil).
func newWrappedHostsFixture(t *testing.T, opt Options, wrap func(context.Context, transport.Listener) transport.Listener) *hostsFixture {
	t.Helper()
	dir := t.TempDir()
	f := &hostsFixture{t: t, path: filepath.Join(dir, "ferry.sock"), logs: filepath.Join(dir, "init.log"), code: t.TempDir()}
	writeFile(t, f.code+"/main.py", "app = None\n")
	// A file, read while the service writes: the handler writes each
	// record in one call.
	logs, err := os.Create(f.logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logs.Close() })
	opt.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opt.Timeline = &boot.Timeline{}
	opt.Setup = setup.Options{Paths: setup.Paths{Root: t.TempDir()}}
	opt.APIAddress = "127.0.0.1:0" // the test machine's loopback
	opt.Apps = map[string]app.Factory{contract.InterfaceASGI: func(context.Context, *contract.Config, string, app.Output) (app.App, error) {
		return named("app"), nil
	}}
	f.svc = New(opt)
	l, err := transport.Listen(contract.Transport{Kind: contract.TransportUnix, Path: f.path})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if wrap != nil {
		l = wrap(ctx, l)
	}
	served := make(chan struct{})
	go func() { defer close(served); f.svc.Serve(ctx, l) }()
	t.Cleanup(func() {
		f.svc.Stop(time.Second)
		cancel()
		l.Close()
		<-served
	})
	return f
}

// log returns what the service logged so far.
func (f *hostsFixture) log() string {
	b, _ := os.ReadFile(f.logs)
	return string(b)
}

// stalled connects and sends HELLO's first byte, then nothing more.
func (f *hostsFixture) stalled() net.Conn {
	f.t.Helper()
	return f.stalledAfter([]byte{byte(frame.TypeHello)})
}

// stalledAfter connects and sends p, then nothing more.
func (f *hostsFixture) stalledAfter(p []byte) net.Conn {
	f.t.Helper()
	c, err := net.Dial("unix", f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	if _, err := c.Write(p); err != nil {
		f.t.Fatal(err)
	}
	return c
}

// host is one host's session with the service; its LOG lines and
// configuration results arrive on the channels.
type host struct {
	sess    *mux.Session
	logs    chan string
	results chan message.ConfigResult
}

// connect completes a host's handshake.
func (f *hostsFixture) connect() *host {
	f.t.Helper()
	c, err := net.Dial("unix", f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	h := &host{logs: make(chan string, 16), results: make(chan message.ConfigResult, 1)}
	h.sess = mux.Client(c, mux.Config{OnControl: func(ft frame.Type, p []byte) {
		switch ft {
		case frame.TypeLog:
			var l message.Log
			if l.Unmarshal(p) == nil {
				select {
				case h.logs <- string(l.Source) + ": " + string(l.Line):
				default:
				}
			}
		case frame.TypeConfigResult:
			var r message.ConfigResult
			if r.Unmarshal(p) == nil {
				h.results <- r
			}
		}
	}})
	f.t.Cleanup(func() { h.sess.Close() })
	return h
}

// configure sends the configuration and waits for its answer.
func (f *hostsFixture) configure(h *host, within time.Duration) message.ConfigResult {
	f.t.Helper()
	doc := `{"program_id":"p","interface":"asgi","entrypoint":"main:app","code":{"encoding":"directory","path":"` + f.code + `"}}`
	if err := h.sess.SendControl(frame.TypeConfig, []byte(doc)); err != nil {
		f.t.Fatal(err)
	}
	select {
	case r := <-h.results:
		return r
	case <-time.After(within):
		f.t.Fatalf("no configuration result within %s; init's log:\n%s", within, f.log())
	}
	return message.ConfigResult{}
}

// get opens a stream and returns the response's body.
func (f *hostsFixture) get(h *host, within time.Duration) string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	st, err := h.sess.Open(ctx, &message.RequestHead{Path: []byte("/")}, nil, true)
	if err != nil {
		f.t.Fatalf("opening a stream: %v", err)
	}
	var head message.ResponseHead
	if err := st.ReadResponse(ctx, &head); err != nil {
		f.t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(st)
	if err != nil {
		f.t.Fatalf("reading the body: %v", err)
	}
	return string(b)
}

// A connection that sends HELLO's first byte and stalls does not hold
// init: a healthy host connecting after it is configured and served at
// once, and a third host that completes its handshake replaces the
// second: the second's session ends, output goes to the third.
func TestStalledConnectionDoesNotHoldInit(t *testing.T) {
	f := newHostsFixture(t, Options{})
	f.stalled()
	second := f.connect()
	// Far below the keepalive timeout (45 s) that used to free init.
	if r := f.configure(second, 20*time.Second); !r.OK {
		t.Fatalf("configuration failed: %+v", r)
	}
	if got := f.get(second, 20*time.Second); got != "app" {
		t.Fatalf("the second host got %q", got)
	}

	third := f.connect()
	select {
	case <-second.sess.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the second host's session was not closed when the third completed its handshake")
	}
	if got := f.get(third, 20*time.Second); got != "app" {
		t.Fatalf("the third host got %q", got)
	}
	f.svc.Line("stdout", 0, []byte("after the third host came"))
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l := <-third.logs:
			if l == "stdout: after the third host came" {
				return
			}
		case <-deadline:
			t.Fatal("program output did not reach the newest host")
		}
	}
}

// Behind the sniffer that shares init's listener with the reference
// protocol (guest/transport.Sniff): a partial HELLO that stalls holds
// neither a host's session nor the reference protocol's connections.
func TestStalledConnectionDoesNotHoldInitBehindTheSniffer(t *testing.T) {
	others := make(chan string, 1)
	f := newWrappedHostsFixture(t, Options{}, func(ctx context.Context, l transport.Listener) transport.Listener {
		return transport.Sniff(ctx, l, func(b byte) bool { return b == byte(frame.TypeHello) }, func(_ context.Context, c io.ReadWriteCloser) {
			defer c.Close()
			b := make([]byte, 4)
			io.ReadFull(c, b)
			others <- string(b)
		}, nil)
	})
	// HELLO's frame header announces a payload that never comes.
	f.stalledAfter(frame.AppendHeader(nil, frame.Header{Type: frame.TypeHello, Length: 40}))
	f.stalled()
	other := f.stalledAfter([]byte("halt"))
	defer other.Close()
	select {
	case got := <-others:
		if got != "halt" {
			t.Fatalf("the reference protocol's side read %q", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the reference protocol's connection was not served")
	}
	h := f.connect()
	if r := f.configure(h, 20*time.Second); !r.OK {
		t.Fatalf("configuration failed: %+v", r)
	}
	if got := f.get(h, 20*time.Second); got != "app" {
		t.Fatalf("the host got %q", got)
	}
}

// closedWithin waits for the service to close c (reading its HELLO
// first); false if c is still open after within.
func closedWithin(t *testing.T, c net.Conn, within time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true
}

// A connection that does not complete its handshake within the bound is
// closed, and the closing is logged with the transport.
func TestStalledConnectionIsClosedAfterTheBound(t *testing.T) {
	f := newHostsFixture(t, Options{HandshakeTimeout: 200 * time.Millisecond})
	c := f.stalled()
	if !closedWithin(t, c, 20*time.Second) {
		t.Fatal("the stalled connection is still open")
	}
	want := "transport=unix:" + f.path
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		logs := f.log()
		if strings.Contains(logs, "level=WARN") && strings.Contains(logs, "did not complete its handshake") && strings.Contains(logs, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warning naming %s in init's log:\n%s", want, logs)
		}
	}
	// The listener still serves.
	if r := f.configure(f.connect(), 20*time.Second); !r.OK {
		t.Fatalf("configuration failed: %+v", r)
	}
}

// Beyond MaxPending connections waiting for their handshake, the oldest
// is closed; the newer ones stay, and a host still gets through.
func TestOldestPendingConnectionIsClosed(t *testing.T) {
	f := newHostsFixture(t, Options{MaxPending: 2, HandshakeTimeout: 10 * time.Minute})
	first := f.stalled()
	// Each is waiting once the service sent it its HELLO.
	readHello(t, first)
	second := f.stalled()
	readHello(t, second)
	third := f.stalled()
	if !closedWithin(t, first, 20*time.Second) {
		t.Fatal("the oldest waiting connection is still open with three waiting")
	}
	readHello(t, third)
	if closedWithin(t, second, 200*time.Millisecond) {
		t.Fatal("the second connection was closed too")
	}
	if r := f.configure(f.connect(), 20*time.Second); !r.OK {
		t.Fatalf("configuration failed: %+v", r)
	}
	if !strings.Contains(f.log(), "too many host connections waiting") {
		t.Errorf("the eviction is not logged:\n%s", f.log())
	}
}

// readHello reads the HELLO frame the service sends on a new connection.
func readHello(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	h, _, err := frame.NewReader(c, frame.DefaultMaxSize).ReadFrame()
	if err != nil || h.Type != frame.TypeHello {
		t.Fatalf("no HELLO from the service: %v %v", h.Type, err)
	}
}

// pipeListener hands out the guest ends of pipes, one connection at a
// time like a virtio-serial port; it records whether Accept was called
// while a connection it gave was still open.
type pipeListener struct {
	hosts   chan net.Conn // host ends, for the test
	mu      sync.Mutex
	open    bool
	overlap bool
	closed  chan struct{}
}

func (p *pipeListener) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	p.mu.Lock()
	if p.open {
		p.overlap = true
	}
	p.open = true
	p.mu.Unlock()
	guest, host := net.Pipe()
	select {
	case p.hosts <- host:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.closed:
		return nil, transport.ErrClosed
	}
	return &endNotifier{Conn: guest, p: p}, nil
}

func (p *pipeListener) Close() error     { close(p.closed); return nil }
func (p *pipeListener) String() string   { return "pipe" }
func (p *pipeListener) OneAtATime() bool { return true }

// endNotifier tells its listener when the connection it gave is closed.
type endNotifier struct {
	net.Conn
	p    *pipeListener
	once sync.Once
}

func (e *endNotifier) Close() error {
	e.once.Do(func() {
		e.p.mu.Lock()
		e.p.open = false
		e.p.mu.Unlock()
	})
	return e.Conn.Close()
}

// A listener that carries one connection at a time is not asked for
// another while a session is served; the next is served once it ends.
func TestOneAtATimeListenerIsServedInTurn(t *testing.T) {
	svc := New(Options{Log: slog.New(slog.DiscardHandler), Timeline: &boot.Timeline{}, Setup: setup.Options{Paths: setup.Paths{Root: t.TempDir()}}})
	l := &pipeListener{hosts: make(chan net.Conn), closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); svc.Serve(ctx, l) }()
	defer func() { cancel(); <-served }()
	for range 2 {
		sess := mux.Client(<-l.hosts, mux.Config{})
		pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
		if _, err := sess.Ping(pctx); err != nil {
			t.Fatalf("the session is not served: %v", err)
		}
		pcancel()
		// While it is served, no second Accept: hold a moment for one.
		select {
		case h := <-l.hosts:
			h.Close()
			t.Fatal("a second connection was accepted while a session was served")
		case <-time.After(200 * time.Millisecond):
		}
		sess.Close()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.overlap {
		t.Fatal("Accept was called while a connection was open")
	}
}
