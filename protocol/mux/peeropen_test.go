package mux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// echoUpper answers a stream with its body in upper case.
func echoUpper(st *Stream) {
	body, err := io.ReadAll(st)
	if err != nil {
		return
	}
	st.WriteResponse(&message.ResponseHead{Status: 200}, bytes.ToUpper(body), true)
}

// peerRoundTrip opens a stream on s with body and returns the answer's body.
func peerRoundTrip(ctx context.Context, s *Session, body []byte) (uint32, []byte, error) {
	st, err := s.Open(ctx, &message.RequestHead{Method: []byte("POST"), Path: []byte("/")}, body, true)
	if err != nil {
		return 0, nil, err
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		return st.ID(), nil, err
	}
	b, err := io.ReadAll(st)
	return st.ID(), b, err
}

// The server (init) opens streams toward the client (the host) with the
// same rules, even ids, while the client's own streams run on the same
// session: both directions at once, bodies larger than a window both ways.
func TestServerOpensStreamsWhileClientDoes(t *testing.T) {
	c, s := sessionPair(t, Config{Handler: echoUpper}, Config{Handler: echoUpper})
	ctx := testContext(t)
	big := bytes.Repeat([]byte("abcdefgh"), DefaultInitialWindow/4) // two windows
	var wg sync.WaitGroup
	for i := range 20 {
		for _, opener := range []*Session{c, s} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := append(fmt.Appendf(nil, "%d-", i), big...)
				id, got, err := peerRoundTrip(ctx, opener, body)
				if err != nil {
					t.Errorf("stream %d: %v", id, err)
					return
				}
				if wantEven := opener == s; (id%2 == 0) != wantEven {
					t.Errorf("stream id %d opened by the %s", id, map[bool]string{true: "server", false: "client"}[wantEven])
				}
				if !bytes.Equal(got, bytes.ToUpper(body)) {
					t.Errorf("stream %d: %d bytes back, want %d", id, len(got), len(body))
				}
			}()
		}
	}
	wg.Wait()
}

// The client's MaxStreams bounds the streams the server opens: Open waits
// for one to finish, and a context ends the wait.
func TestServerOpenWaitsForClientMaxStreams(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	running, peak := 0, 0
	handler := func(st *Stream) {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		echoUpper(st)
	}
	c, s := sessionPair(t, Config{MaxStreams: 2, Handler: handler}, Config{})
	_ = c
	ctx := testContext(t)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); peerRoundTrip(ctx, s, []byte("x")) }()
	}
	for s.NumStreams() < 2 {
		time.Sleep(time.Millisecond)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := s.Open(short, &message.RequestHead{Method: []byte("GET")}, nil, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third stream beyond the client's MaxStreams of 2: %v, want it to wait", err)
	}
	close(release)
	wg.Wait()
	if _, got, err := peerRoundTrip(ctx, s, []byte("after")); err != nil || string(got) != "AFTER" {
		t.Fatalf("a stream once the others finished: %q %v", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak != 2 {
		t.Fatalf("%d streams served at once, want 2", peak)
	}
}

// A client that goes away refuses new server-opened streams (Open fails
// with ErrGoAway) and finishes the ones it was serving.
func TestClientGoAwayEndsServerOpenedStreams(t *testing.T) {
	release := make(chan struct{})
	handler := func(st *Stream) {
		<-release
		echoUpper(st)
	}
	c, s := sessionPair(t, Config{Handler: handler}, Config{})
	ctx := testContext(t)
	done := make(chan error, 1)
	go func() {
		_, got, err := peerRoundTrip(ctx, s, []byte("in flight"))
		if err == nil && string(got) != "IN FLIGHT" {
			err = fmt.Errorf("got %q", got)
		}
		done <- err
	}()
	for c.NumStreams() < 1 {
		time.Sleep(time.Millisecond)
	}
	if err := c.GoAway(frame.CodeNoError, "draining"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.GoAwayReceived():
	case <-ctx.Done():
		t.Fatal("no GOAWAY")
	}
	if _, err := s.Open(ctx, &message.RequestHead{}, nil, true); !errors.Is(err, ErrGoAway) {
		t.Fatalf("Open after the client's GOAWAY: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the stream in flight: %v", err)
	}
}

// A client without a Handler hands server-opened streams to Accept, like
// a server does the client's.
func TestClientAcceptsServerOpenedStreams(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	go func() {
		st, err := c.Accept(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		var h message.RequestHead
		if err := st.RequestHead(&h); err != nil || string(h.Path) != "/" {
			t.Errorf("head %+v %v", h, err)
		}
		echoUpper(st)
	}()
	if _, got, err := peerRoundTrip(ctx, s, []byte("accepted")); err != nil || string(got) != "ACCEPTED" {
		t.Fatalf("%q %v", got, err)
	}
}

// A server that ignores the client's limits: a REQUEST beyond the
// client's MaxStreams is refused (RESET REFUSED_STREAM) and the session
// goes on; one with an odd id, the client's own parity, is a connection
// error.
func TestClientRefusesServerStreamsBeyondItsLimits(t *testing.T) {
	a, b := unixPair(t)
	release := make(chan struct{})
	c := Client(a, Config{MaxStreams: 1, Handler: func(st *Stream) { <-release; echoUpper(st) }})
	t.Cleanup(func() { close(release); c.Close() })
	p := newRawPeer(t, b)
	h := message.Hello{Version: 1, Role: message.RoleServer, MaxFrameSize: frame.DefaultMaxSize, InitialWindow: DefaultInitialWindow, MaxStreams: 100}
	p.send(frame.Header{Type: frame.TypeHello}, h.Append(nil))
	if fh, _ := p.next(); fh.Type != frame.TypeHello {
		t.Fatalf("first frame %v, want HELLO", fh)
	}
	p.send(frame.Header{Type: frame.TypeRequest, Flags: frame.FlagFin, StreamID: 2}, request("/held"))
	p.send(frame.Header{Type: frame.TypeRequest, Flags: frame.FlagFin, StreamID: 4}, request("/more"))
	p.expectReset(4, frame.CodeRefusedStream)
	p.send(frame.Header{Type: frame.TypeRequest, Flags: frame.FlagFin, StreamID: 7}, request("/odd"))
	p.expectGoAway(frame.CodeProtocol)
	wantProtocolError(t, waitClosed(t, c), frame.CodeProtocol)
}
