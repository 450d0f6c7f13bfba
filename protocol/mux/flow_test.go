package mux

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// echoHandler answers a stream with its request body, upper-cased path as
// a header, and the body echoed back.
func echoHandler(st *Stream) {
	body, err := io.ReadAll(st)
	if err != nil {
		return
	}
	st.WriteResponse(&message.ResponseHead{Status: 200}, body, true)
}

// One stream whose reader stalls must not hold up 100 others, and the
// stalled stream's buffer must stay within its window while its writer
// waits.
func TestFlowControlIsolatesStalledStream(t *testing.T) {
	const window = 64 << 10
	c, s := sessionPair(t, Config{}, Config{InitialWindow: window})
	ctx := testContext(t)

	stalled := make(chan *Stream, 1)
	go func() {
		for {
			st, err := s.Accept(ctx)
			if err != nil {
				return
			}
			var req message.RequestHead
			st.RequestHead(&req)
			if string(req.Path) == "/stall" {
				stalled <- st // never read until the others are done
				continue
			}
			go echoHandler(st)
		}
	}()

	// The stalled upload: 4 MiB against a 64 KiB window.
	upload := bytes.Repeat([]byte("0123456789abcdef"), 256<<10)
	var uploaded atomic.Int64
	uploadDone := make(chan error, 1)
	stallStream, err := c.Open(ctx, &message.RequestHead{Path: []byte("/stall")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for off := 0; off < len(upload); off += 4096 {
			if _, err := stallStream.Write(upload[off : off+4096]); err != nil {
				uploadDone <- err
				return
			}
			uploaded.Add(4096)
		}
		uploadDone <- stallStream.CloseWrite()
	}()
	server := <-stalled

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	// 100 other streams complete while the stalled one is not read.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := []byte(fmt.Sprintf("stream %d %s", i, bytes.Repeat([]byte("x"), 32<<10)))
			st, err := c.Open(ctx, &message.RequestHead{Path: []byte("/echo")}, body, true)
			if err != nil {
				errs <- err
				return
			}
			var resp message.ResponseHead
			if err := st.ReadResponse(ctx, &resp); err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, body) {
				errs <- fmt.Errorf("stream %d: echo mismatch (%d bytes, %v)", i, len(got), err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The stalled writer is blocked with exactly one window in flight, and
	// the receiver buffers no more than that.
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-uploadDone:
		t.Fatalf("stalled upload finished early: %v", err)
	default:
	}
	if n := server.Buffered(); n > window {
		t.Fatalf("stalled stream buffers %d bytes, window is %d", n, window)
	}
	if n := uploaded.Load(); n > window {
		t.Fatalf("writer got %d bytes through a %d-byte window", n, window)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 8<<20 {
		t.Fatalf("heap grew by %d bytes while a 4 MiB upload was stalled", grew)
	}
	t.Logf("stalled stream buffered %d bytes (window %d); heap in use grew %d bytes",
		server.Buffered(), window, int64(after.HeapInuse)-int64(before.HeapInuse))

	// Once read, the stalled upload arrives intact.
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, upload) {
		t.Fatalf("stalled upload: %d bytes, %v", len(got), err)
	}
	if err := <-uploadDone; err != nil {
		t.Fatal(err)
	}
}

func TestThousandConcurrentStreams(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	go func() {
		for {
			st, err := s.Accept(ctx)
			if err != nil {
				return
			}
			go echoHandler(st)
		}
	}()
	var wg sync.WaitGroup
	var failures atomic.Int32
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := []byte(fmt.Sprintf("request %d", i))
			st, err := c.Open(ctx, &message.RequestHead{Path: []byte("/")}, body, true)
			if err != nil {
				failures.Add(1)
				return
			}
			var resp message.ResponseHead
			if err := st.ReadResponse(ctx, &resp); err != nil {
				failures.Add(1)
				return
			}
			if got, err := io.ReadAll(st); err != nil || !bytes.Equal(got, body) {
				failures.Add(1)
			}
		}(i)
	}
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of 1000 streams failed", n)
	}
	if n := c.NumStreams(); n != 0 {
		t.Fatalf("%d streams still open on the client", n)
	}
}

func TestResetReachesPeer(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	st, err := c.Open(ctx, &message.RequestHead{Path: []byte("/")}, []byte("partial"), false)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	io.ReadFull(srv, buf)
	st.Reset(7, "client went away")
	_, err = srv.Read(buf)
	serr, ok := err.(*StreamError)
	if !ok || serr.Code != 7 || !serr.Remote || serr.Message != "client went away" {
		t.Fatalf("server read after reset: %v", err)
	}
	if _, err := srv.Write([]byte("x")); err == nil {
		t.Fatal("write after reset succeeded")
	}
}

// A RESET after the peer finished stops only our direction: what it sent
// stays readable.
func TestResetAfterFinKeepsReceivedData(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	st, err := c.Open(ctx, &message.RequestHead{Path: []byte("/")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := s.Accept(ctx)
	srv.WriteResponse(&message.ResponseHead{Status: 200}, []byte("complete"), true)
	srv.Reset(0, "request body not needed")
	var resp message.ResponseHead
	if err := st.ReadResponse(ctx, &resp); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(st); err != nil || string(got) != "complete" {
		t.Fatalf("body %q, %v", got, err)
	}
}

func TestGoAwayDrainsOpenStreams(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	st, err := c.Open(ctx, &message.RequestHead{Path: []byte("/slow")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shutdown := make(chan error, 1)
	go func() { shutdown <- s.Shutdown(ctx) }()
	select {
	case <-c.GoAwayReceived():
	case <-time.After(5 * time.Second):
		t.Fatal("client never saw GOAWAY")
	}

	// New streams are refused once the client has seen GOAWAY.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Open(ctx, &message.RequestHead{Path: []byte("/new")}, nil, true)
		if err == ErrGoAway {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Open after GOAWAY: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-shutdown:
		t.Fatalf("shutdown returned with a stream open: %v", err)
	default:
	}
	// The open stream still completes.
	st.WriteLast([]byte("body"))
	echoHandler(srv)
	var resp message.ResponseHead
	if err := st.ReadResponse(ctx, &resp); err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(st); string(got) != "body" {
		t.Fatalf("body %q", got)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	a, b := unixPair(t)
	defer a.Close()
	s := Server(b, Config{KeepaliveInterval: 20 * time.Millisecond, KeepaliveTimeout: 150 * time.Millisecond})
	defer s.Close()
	p := newRawPeer(t, a)
	p.hello(1 << 16)
	// The raw peer never answers pings.
	if err := waitClosed(t, s); err != ErrKeepaliveTimeout {
		t.Fatalf("session error %v, want ErrKeepaliveTimeout", err)
	}
}

func TestPingMeasuresRoundTrip(t *testing.T) {
	c, _ := sessionPair(t, Config{}, Config{})
	rtt, err := c.Ping(testContext(t))
	if err != nil || rtt <= 0 {
		t.Fatalf("ping: %v, %v", rtt, err)
	}
}

func TestCancellationAndDeadlines(t *testing.T) {
	// A peer that never says hello: Open waits for the handshake until ctx ends.
	a, b := unixPair(t)
	defer a.Close()
	s := Client(b, Config{})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Open(ctx, &message.RequestHead{}, nil, true); err != context.DeadlineExceeded {
		t.Fatalf("Open: %v, want deadline exceeded", err)
	}
	if _, err := s.Accept(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Accept: %v, want deadline exceeded", err)
	}

	c, srv := sessionPair(t, Config{}, Config{})
	st, err := c.Open(testContext(t), &message.RequestHead{}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := st.Read(make([]byte, 1)); err != ErrTimeout {
		t.Fatalf("Read past deadline: %v", err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer rcancel()
	var resp message.ResponseHead
	st.SetReadDeadline(time.Time{})
	if err := st.ReadResponse(rctx, &resp); err != context.DeadlineExceeded {
		t.Fatalf("ReadResponse: %v", err)
	}
	// Closing the session fails blocked reads promptly.
	done := make(chan error, 1)
	go func() { _, err := st.Read(make([]byte, 1)); done <- err }()
	time.Sleep(10 * time.Millisecond)
	srv.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read succeeded on a closed session")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still blocked after the peer closed")
	}
}

// A write larger than the peer's frames goes out, as far as the window
// allows, as frames of at most the peer's size, back to back (one
// vectored write), the last one carrying FIN; the rest waits for window.
func TestWriteLargerThanAFrameIsCutToThePeersFrames(t *testing.T) {
	const window = 200 << 10 // three full frames and a part
	body := make([]byte, window+(20<<10))
	for i := range body {
		body[i] = byte(i * 7)
	}
	_, p := hostileSetup(t, Config{Handler: func(st *Stream) {
		st.WriteResponse(&message.ResponseHead{Status: 200}, nil, false)
		st.WriteLast(body)
	}})
	p.hello(window)
	p.send(frame.Header{Type: frame.TypeRequest, Flags: frame.FlagFin, StreamID: 1}, request("/"))
	p.expect(frame.TypeResponse)
	var got []byte
	var sizes []int
	for {
		h, payload := p.next()
		if h.Type != frame.TypeData || h.StreamID != 1 {
			t.Fatalf("got %v, want DATA on stream 1", h)
		}
		if len(payload) > frame.DefaultMaxSize {
			t.Fatalf("a DATA frame of %d bytes, over the peer's %d", len(payload), frame.DefaultMaxSize)
		}
		got = append(got, payload...)
		sizes = append(sizes, len(payload))
		if len(got) == window {
			if h.Has(frame.FlagFin) {
				t.Fatal("FIN before the whole body was sent")
			}
			p.send(frame.Header{Type: frame.TypeWindowUpdate, StreamID: 1}, windowUpdate(window))
		}
		if h.Has(frame.FlagFin) {
			break
		}
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("%d bytes arrived, not the %d sent", len(got), len(body))
	}
	if want := []int{64 << 10, 64 << 10, 64 << 10, 8 << 10, 20 << 10}; !slices.Equal(sizes, want) {
		t.Fatalf("frame sizes %v, want %v", sizes, want)
	}
}
