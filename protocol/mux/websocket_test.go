package mux

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/message"
)

func TestWebSocketEchoWithFragmentsAndClose(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	go func() {
		st, err := s.Accept(ctx)
		if err != nil {
			return
		}
		var req message.RequestHead
		st.RequestHead(&req)
		st.WriteResponse(&message.ResponseHead{Status: 101, Subprotocol: req.Subprotocols[1]}, nil, false)
		for {
			text, msg, err := st.ReadMessage(4 << 20)
			var closeErr *WSCloseError
			if errors.As(err, &closeErr) {
				st.CloseWebSocket(closeErr.Code, "echo "+closeErr.Reason)
				return
			}
			if err != nil {
				return
			}
			st.WriteMessage(text, msg)
		}
	}()
	st, err := c.Open(ctx, &message.RequestHead{Kind: message.KindWebSocket, Path: []byte("/ws"),
		Subprotocols: [][]byte{[]byte("a"), []byte("b")}}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	var resp message.ResponseHead
	if err := st.ReadResponse(ctx, &resp); err != nil || resp.Status != 101 || string(resp.Subprotocol) != "b" {
		t.Fatalf("accept: %+v %v", resp, err)
	}
	big := bytes.Repeat([]byte{0, 1, 2, 3}, 256<<10) // 1 MiB: larger than the window
	msgs := []struct {
		text bool
		data []byte
	}{{true, []byte("héllo")}, {false, big}, {true, []byte{}}}
	for _, m := range msgs {
		if err := st.WriteMessage(m.text, m.data); err != nil {
			t.Fatal(err)
		}
		text, got, err := st.ReadMessage(4 << 20)
		if err != nil || text != m.text || !bytes.Equal(got, m.data) {
			t.Fatalf("echo of %d bytes: text=%v %d bytes %v", len(m.data), text, len(got), err)
		}
	}
	st.CloseWebSocket(4001, "bye")
	_, _, err = st.ReadMessage(1 << 20)
	var closeErr *WSCloseError
	if !errors.As(err, &closeErr) || closeErr.Code != 4001 || closeErr.Reason != "echo bye" {
		t.Fatalf("close: %v", err)
	}
}

func TestWebSocketDeniedBeforeAccept(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	go func() {
		st, err := s.Accept(ctx)
		if err == nil {
			st.CloseWebSocket(1008, "not allowed")
		}
	}()
	st, err := c.Open(ctx, &message.RequestHead{Kind: message.KindWebSocket, Path: []byte("/ws")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	var resp message.ResponseHead
	err = st.ReadResponse(ctx, &resp)
	var closeErr *WSCloseError
	if !errors.As(err, &closeErr) || closeErr.Code != 1008 {
		t.Fatalf("denial: %v", err)
	}
}

func TestWebSocketMessageLimit(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	st, _ := c.Open(ctx, &message.RequestHead{Kind: message.KindWebSocket}, nil, false)
	srv, _ := s.Accept(ctx)
	go st.WriteMessage(false, make([]byte, 100<<10))
	if _, _, err := srv.ReadMessage(64 << 10); err == nil {
		t.Fatal("oversized message accepted")
	}
}

// wsPair opens a websocket stream from c and returns both ends, accepted.
func wsPair(t *testing.T, c, s *Session) (client, server *Stream) {
	t.Helper()
	ctx := testContext(t)
	client, err := c.Open(ctx, &message.RequestHead{Kind: message.KindWebSocket, Path: []byte("/ws")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	server, err = s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := server.WriteResponse(&message.ResponseHead{Status: 101}, nil, false); err != nil {
		t.Fatal(err)
	}
	var resp message.ResponseHead
	if err := client.ReadResponse(ctx, &resp); err != nil {
		t.Fatal(err)
	}
	return client, server
}

// A message larger than the window streams part by part: the receiver
// gets its first bytes while the sender is still writing it, holds no more
// than a window, and a sender whose receiver stops reading gets no further
// than the window allows.
func TestWebSocketFragmentsStreamUnderTheWindow(t *testing.T) {
	const window = 64 << 10
	c, s := sessionPair(t, Config{}, Config{InitialWindow: window})
	client, server := wsPair(t, c, s)

	part := bytes.Repeat([]byte("0123456789abcdef"), 2<<10) // 32 KiB
	firstSeen := make(chan struct{})
	var want bytes.Buffer
	sent := make(chan error, 1)
	go func() {
		// Part 1 alone; the rest only once the receiver has seen it.
		if _, err := client.WriteFragment(true, true, part); err != nil {
			sent <- err
			return
		}
		<-firstSeen
		for i := range 63 {
			p := bytes.Repeat([]byte{byte('a' + i%26)}, len(part))
			if _, err := client.WriteFragment(true, i < 62, p); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	want.Write(part)
	for i := range 63 {
		want.Write(bytes.Repeat([]byte{byte('a' + i%26)}, len(part)))
	}

	var got bytes.Buffer
	buf := make([]byte, 10<<10) // smaller than a fragment: parts of parts
	for first := true; ; first = false {
		if b := server.Buffered(); b > window {
			t.Fatalf("receiver holds %d bytes, window %d", b, window)
		}
		n, text, more, err := server.ReadFragment(buf)
		if err != nil || !text {
			t.Fatalf("read after %d bytes: text %v, %v", got.Len(), text, err)
		}
		got.Write(buf[:n])
		if first {
			close(firstSeen)
		}
		if !more {
			break
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("reassembled %d bytes, sent %d, equal %v", got.Len(), want.Len(), bytes.Equal(got.Bytes(), want.Bytes()))
	}

	// Nobody reads now: a 1 MiB message gets no further than the window.
	client.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := client.WriteFragment(false, false, make([]byte, 1<<20))
	if !errors.Is(err, ErrTimeout) || n > window {
		t.Fatalf("unread 1 MiB message: %d bytes sent, %v; want at most %d and ErrTimeout", n, err, window)
	}
	// The rest follows once the receiver reads; the message arrives whole.
	client.SetWriteDeadline(time.Time{})
	go func() {
		_, err := client.WriteFragment(false, false, make([]byte, 1<<20-n))
		sent <- err
	}()
	text, msg, err := server.ReadMessage(2 << 20)
	if err != nil || text || len(msg) != 1<<20 {
		t.Fatalf("message after the stall: text %v, %d bytes, %v", text, len(msg), err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// ReadFragment with an empty buffer waits for a message without consuming
// it; empty messages and a close in the middle of a message are reported
// as such.
func TestWebSocketReadFragmentEdges(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	client, server := wsPair(t, c, s)

	if err := client.WriteMessage(false, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	for range 2 { // waiting twice consumes nothing
		if n, text, more, err := server.ReadFragment(nil); n != 0 || text || !more || err != nil {
			t.Fatalf("wait: %d %v %v %v", n, text, more, err)
		}
	}
	buf := make([]byte, 2)
	if n, _, more, err := server.ReadFragment(buf); n != 2 || !more || err != nil || string(buf) != "ab" {
		t.Fatalf("first part: %d %q %v %v", n, buf[:n], more, err)
	}
	if n, _, more, err := server.ReadFragment(buf); n != 1 || more || err != nil || buf[0] != 'c' {
		t.Fatalf("last part: %d %q %v %v", n, buf[:n], more, err)
	}

	if err := client.WriteMessage(true, nil); err != nil {
		t.Fatal(err)
	}
	if n, text, more, err := server.ReadFragment(buf); n != 0 || !text || more || err != nil {
		t.Fatalf("empty message: %d %v %v %v", n, text, more, err)
	}

	// An empty part with more sends nothing; a close drops the unfinished
	// message.
	if n, err := client.WriteFragment(true, true, nil); n != 0 || err != nil {
		t.Fatalf("empty part: %d %v", n, err)
	}
	if _, err := client.WriteFragment(true, true, []byte("half")); err != nil {
		t.Fatal(err)
	}
	if err := client.CloseWebSocket(1009, "message too big"); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 16)
	if n, text, more, err := server.ReadFragment(big); n != 4 || !text || !more || err != nil {
		t.Fatalf("half message: %d %v %v %v", n, text, more, err)
	}
	_, _, _, err := server.ReadFragment(big)
	var closeErr *WSCloseError
	if !errors.As(err, &closeErr) || closeErr.Code != 1009 || closeErr.Reason != "message too big" {
		t.Fatalf("close after half a message: %v", err)
	}
	if _, err := client.WriteFragment(true, false, []byte("late")); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

// ReadFragment is for websocket streams only.
func TestReadFragmentOnDataStream(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	st, err := c.Open(ctx, &message.RequestHead{Method: []byte("POST")}, []byte("body"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, _, _, err := srv.ReadFragment(make([]byte, 8)); err == nil {
		t.Fatal("ReadFragment on a DATA stream succeeded")
	}
}
