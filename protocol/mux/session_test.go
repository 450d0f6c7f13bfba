package mux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

func TestRoundTripWithTrailers(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	go func() {
		st, err := s.Accept(ctx)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		var req message.RequestHead
		if err := st.RequestHead(&req); err != nil {
			t.Errorf("request head: %v", err)
			return
		}
		body, err := io.ReadAll(st)
		if err != nil {
			t.Errorf("read body: %v", err)
			return
		}
		resp := message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte("x-path"), Value: req.Path}}}
		if err := st.WriteResponse(&resp, nil, false); err != nil {
			t.Errorf("write response: %v", err)
			return
		}
		st.Write(bytes.ToUpper(body))
		st.CloseWriteTrailers([]message.HeaderField{{Name: []byte("x-sum"), Value: []byte("42")}})
	}()
	st, err := c.Open(ctx, &message.RequestHead{Method: []byte("POST"), Path: []byte("/echo")}, []byte("hello ferry"), true)
	if err != nil {
		t.Fatal(err)
	}
	var resp message.ResponseHead
	if err := st.ReadResponse(ctx, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || string(resp.Headers[0].Value) != "/echo" {
		t.Fatalf("response head %+v", resp)
	}
	body, err := io.ReadAll(st)
	if err != nil || string(body) != "HELLO FERRY" {
		t.Fatalf("body %q, %v", body, err)
	}
	tr, err := st.Trailers()
	if err != nil || len(tr) != 1 || string(tr[0].Value) != "42" {
		t.Fatalf("trailers %v, %v", tr, err)
	}
}

// With Config.Handler, streams are served without Accept, concurrently,
// and handler goroutines are reused once they finish.
func TestHandlerServesStreamsAndReusesGoroutines(t *testing.T) {
	var mu sync.Mutex
	running, peak, calls := 0, 0, 0
	release := make(chan struct{})
	handler := func(st *Stream) {
		mu.Lock()
		running++
		calls++
		peak = max(peak, running)
		mu.Unlock()
		body, _ := io.ReadAll(st)
		if bytes.Equal(body, []byte("wait")) {
			<-release
		}
		st.WriteResponse(&message.ResponseHead{Status: 200}, bytes.ToUpper(body), true)
		mu.Lock()
		running--
		mu.Unlock()
	}
	c, _ := sessionPair(t, Config{}, Config{Handler: handler})
	ctx := testContext(t)
	get := func(body string) string {
		st, err := c.Open(ctx, &message.RequestHead{Method: []byte("POST")}, []byte(body), true)
		if err != nil {
			t.Error(err)
			return ""
		}
		var resp message.ResponseHead
		if err := st.ReadResponse(ctx, &resp); err != nil {
			t.Error(err)
			return ""
		}
		b, _ := io.ReadAll(st)
		return string(b)
	}
	// Three requests held open at once run concurrently.
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); get("wait") }()
	}
	for {
		mu.Lock()
		r := running
		mu.Unlock()
		if r == 3 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	// Sequential requests afterwards reuse the idle goroutines.
	before := runtime.NumGoroutine()
	for i := range 50 {
		if got := get(fmt.Sprint("x", i)); got != fmt.Sprint("X", i) {
			t.Fatalf("response %q", got)
		}
	}
	// A request can arrive just before the previous handler goes idle, so
	// allow a little growth; one goroutine per request would be 50.
	if after := runtime.NumGoroutine(); after > before+3 {
		t.Fatalf("goroutines grew from %d to %d over 50 sequential requests", before, after)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak != 3 || calls != 53 {
		t.Fatalf("peak %d concurrent handlers, %d calls", peak, calls)
	}
}

// The raw variants pass heads through undecoded; TryRead never blocks;
// Done and Err report how a stream ended.
func TestRawHeadsTryReadAndDone(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	reqHead := (&message.RequestHead{Method: []byte("PUT"), Path: []byte("/raw")}).Append(nil)
	st, err := c.OpenRaw(ctx, reqHead, []byte("abc"), false)
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in.Head(), reqHead) {
		t.Fatalf("head %x, want %x", in.Head(), reqHead)
	}
	buf := make([]byte, 16)
	deadline := time.Now().Add(5 * time.Second)
	var got []byte
	for len(got) < 3 && time.Now().Before(deadline) {
		n, err := in.TryRead(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "abc" {
		t.Fatalf("TryRead got %q", got)
	}
	if n, err := in.TryRead(buf); n != 0 || err != nil {
		t.Fatalf("TryRead with nothing buffered: %d, %v", n, err)
	}
	respHead := (&message.ResponseHead{Status: 201}).Append(nil)
	if err := in.WriteResponseRaw(respHead, []byte("ok"), false); err != nil {
		t.Fatal(err)
	}
	raw, err := st.ReadResponseRaw(ctx)
	if err != nil || !bytes.Equal(raw, respHead) {
		t.Fatalf("response head %x, %v", raw, err)
	}
	select {
	case <-in.Done():
		t.Fatal("Done before the stream ended")
	default:
	}
	st.Reset(frame.CodeCancel, "client left")
	select {
	case <-in.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the peer's reset")
	}
	var serr *StreamError
	if err := in.Err(); !errors.As(err, &serr) || serr.Code != frame.CodeCancel || !serr.Remote {
		t.Fatalf("Err after reset: %v", err)
	}
}

// TryRead reports io.EOF together with the last bytes of a finished body,
// so that a relay knows the body is complete without asking twice.
func TestTryReadEndsWithTheLastBytes(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	head := (&message.RequestHead{Method: []byte("POST"), Path: []byte("/")}).Append(nil)
	if _, err := c.OpenRaw(ctx, head, []byte("xyz"), true); err != nil {
		t.Fatal(err)
	}
	in, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); in.Buffered() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the body did not arrive: %d bytes buffered", in.Buffered())
		}
	}
	buf := make([]byte, 2)
	if n, err := in.TryRead(buf); n != 2 || err != nil {
		t.Fatalf("first TryRead: %d, %v; want 2 bytes and more to come", n, err)
	}
	if n, err := in.TryRead(buf); n != 1 || err != io.EOF || buf[0] != 'z' {
		t.Fatalf("second TryRead: %d %q, %v; want the last byte with io.EOF", n, buf[:n], err)
	}
	if n, err := in.TryRead(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the end: %d, %v; want io.EOF", n, err)
	}
}

// Handshake tells a completed handshake from a peer that stalls inside
// its HELLO (ctx ends) and from one that leaves before it (the session's
// error): init's listener decides on it which connection is the host's.
func TestHandshakeOutcomes(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	if _, err := s.Handshake(testContext(t)); err != nil {
		t.Fatalf("a client's handshake: %v", err)
	}
	if _, err := c.Handshake(testContext(t)); err != nil {
		t.Fatalf("a server's handshake: %v", err)
	}
	// server starts a session whose peer sends p, then leaves or not.
	server := func(p []byte, leave bool) *Session {
		peer, conn := unixPair(t)
		t.Cleanup(func() { peer.Close() })
		s := Server(conn, Config{})
		t.Cleanup(func() { s.Close() })
		peer.Write(p)
		if leave {
			peer.Close()
		}
		return s
	}

	stalled := server(frame.AppendHeader(nil, frame.Header{Type: frame.TypeHello, Length: 40})[:5], false)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := stalled.Handshake(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a peer stalled inside its HELLO: %v, want the context's end", err)
	}

	gone := server([]byte{byte(frame.TypeHello)}, true)
	if _, err := gone.Handshake(testContext(t)); err == nil || err != gone.Err() {
		t.Fatalf("a peer gone before its HELLO: %v, want the session's error (%v)", err, gone.Err())
	}
}

// A RESPONSE whose body and end the peer sent in the same write is read
// whole right after its head: the read loop wakes the head's reader only
// once the frames read with it are applied. (Before, a relay that lost the
// race with the read loop saw the head alone and chunked a small body it
// would otherwise have answered with a Content-Length.)
func TestHeadIsReadWithTheBodySentWithIt(t *testing.T) {
	c, _ := sessionPair(t, Config{}, Config{Handler: func(st *Stream) {
		st.WriteResponse(&message.ResponseHead{Status: 200}, []byte("all at once"), true)
	}})
	ctx := testContext(t)
	buf := make([]byte, 64)
	for i := range 300 {
		st, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		var rh message.ResponseHead
		if err := st.ReadResponse(ctx, &rh); err != nil {
			t.Fatal(err)
		}
		if n, err := st.TryRead(buf); err != io.EOF || string(buf[:n]) != "all at once" {
			t.Fatalf("request %d: right after the head, TryRead gave %q, %v; want the whole body with io.EOF", i, buf[:n], err)
		}
	}
}

// A request whose context has ended (its client left, its time ran out)
// is not sent: Open fails with the context's error and the peer sees no
// stream, even where a slot and the peer's HELLO are ready at once.
func TestOpenWithAnEndedContextSendsNothing(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	if _, err := c.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(ctx)
	cancel()
	for range 50 {
		if st, err := c.Open(ended, &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true); !errors.Is(err, context.Canceled) {
			t.Fatalf("Open with an ended context: %v, %v; want context.Canceled", st, err)
		}
	}
	// The next request is the first the peer sees.
	if _, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/next")}, nil, true); err != nil {
		t.Fatal(err)
	}
	st, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var req message.RequestHead
	if err := st.RequestHead(&req); err != nil || string(req.Path) != "/next" {
		t.Fatalf("the peer's first stream: %q %v, want /next", req.Path, err)
	}
}
