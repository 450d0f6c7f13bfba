package mux

import (
	"bytes"
	"errors"
	"testing"

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
