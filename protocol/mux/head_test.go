package mux

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// bigHeaders is a header list that encodes to more than the smallest frame
// size a peer may announce.
func bigHeaders() []message.HeaderField {
	return []message.HeaderField{{Name: []byte("x-big"), Value: bytes.Repeat([]byte("b"), frame.MinMaxSize+1)}}
}

// headTestPair is a session pair whose sides both accept only the
// smallest frames, and at most two streams from the client.
func headTestPair(t *testing.T) (*Session, *Session) {
	return sessionPair(t, Config{MaxFrameSize: frame.MinMaxSize}, Config{MaxFrameSize: frame.MinMaxSize, MaxStreams: 2})
}

// A REQUEST head larger than the peer's frames is refused by Open with
// ErrHeadTooLarge, before anything reaches the wire: the session and a
// stream in flight go on, the refused stream's slot is free again, and the
// next stream opens normally.
func TestOversizedRequestHeadIsRefusedAndTheSessionStaysUp(t *testing.T) {
	c, s := headTestPair(t)
	ctx := testContext(t)
	inFlight, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/download")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.WriteResponse(&message.ResponseHead{Status: 200}, []byte("first half, "), false); err != nil {
		t.Fatal(err)
	}

	huge := &message.RequestHead{Method: []byte("GET"), Path: []byte("/"), Headers: bigHeaders()}
	if _, err := c.Open(ctx, huge, nil, true); !errors.Is(err, ErrHeadTooLarge) {
		t.Errorf("Open with a %d-byte head: %v, want ErrHeadTooLarge", len(huge.Append(nil)), err)
	}
	if _, err := c.OpenRaw(ctx, huge.Append(nil), []byte("body"), true); !errors.Is(err, ErrHeadTooLarge) {
		t.Errorf("OpenRaw with a %d-byte head: %v, want ErrHeadTooLarge", len(huge.Append(nil)), err)
	}

	// The stream in flight completes intact.
	if _, err := srv.WriteLast([]byte("second half")); err != nil {
		t.Fatal(err)
	}
	var resp message.ResponseHead
	if err := inFlight.ReadResponse(ctx, &resp); err != nil {
		t.Fatal(err)
	}
	if body, err := io.ReadAll(inFlight); err != nil || string(body) != "first half, second half" {
		t.Fatalf("stream in flight: %q, %v", body, err)
	}
	if c.Err() != nil || s.Err() != nil {
		t.Fatalf("session closed: client %v, server %v", c.Err(), s.Err())
	}

	// The server takes two streams at once: both open only if the refused
	// ones gave their slots back, and their ids are accepted after the
	// ids the refused streams never used on the wire.
	var opened []*Stream
	for _, path := range []string{"/a", "/b"} {
		st, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte(path)}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		opened = append(opened, st)
	}
	for range opened {
		in, err := s.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var req message.RequestHead
		if err := in.RequestHead(&req); err != nil {
			t.Fatal(err)
		}
		in.WriteResponse(&message.ResponseHead{Status: 200}, req.Path, true)
	}
	for i, st := range opened {
		if err := st.ReadResponse(ctx, &resp); err != nil {
			t.Fatal(err)
		}
		if body, err := io.ReadAll(st); err != nil || string(body) != []string{"/a", "/b"}[i] {
			t.Fatalf("stream after the refusal: %q, %v", body, err)
		}
	}
}

// A RESPONSE head larger than the peer's frames is refused by
// WriteResponse with ErrHeadTooLarge; nothing was sent, so the stream can
// still be answered (here with a 502) and the session goes on.
func TestOversizedResponseHeadIsRefusedAndTheStreamCanStillBeAnswered(t *testing.T) {
	for _, raw := range []bool{false, true} {
		c, s := headTestPair(t)
		ctx := testContext(t)
		st, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		in, err := s.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		huge := &message.ResponseHead{Status: 200, Headers: bigHeaders()}
		if raw {
			err = in.WriteResponseRaw(huge.Append(nil), []byte("body"), true)
		} else {
			err = in.WriteResponse(huge, []byte("body"), true)
		}
		if !errors.Is(err, ErrHeadTooLarge) {
			t.Fatalf("raw %v: WriteResponse with a big head: %v, want ErrHeadTooLarge", raw, err)
		}
		if err := in.WriteResponse(&message.ResponseHead{Status: 502}, []byte("too large"), true); err != nil {
			t.Fatalf("raw %v: answering after the refusal: %v", raw, err)
		}
		var resp message.ResponseHead
		if err := st.ReadResponse(ctx, &resp); err != nil || resp.Status != 502 {
			t.Fatalf("raw %v: response %+v, %v", raw, resp, err)
		}
		if body, err := io.ReadAll(st); err != nil || string(body) != "too large" {
			t.Fatalf("raw %v: body %q, %v", raw, body, err)
		}
		if c.Err() != nil || s.Err() != nil {
			t.Fatalf("raw %v: session closed: client %v, server %v", raw, c.Err(), s.Err())
		}
	}
}

// Trailers are a head too: too large ones are refused and the stream can
// still be ended (or reset) without them.
func TestOversizedTrailersAreRefused(t *testing.T) {
	c, s := headTestPair(t)
	ctx := testContext(t)
	st, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.WriteResponse(&message.ResponseHead{Status: 200}, []byte("body"), false); err != nil {
		t.Fatal(err)
	}
	if err := in.CloseWriteTrailers(bigHeaders()); !errors.Is(err, ErrHeadTooLarge) {
		t.Fatalf("big trailers: %v, want ErrHeadTooLarge", err)
	}
	if err := in.CloseWrite(); err != nil {
		t.Fatalf("ending after refused trailers: %v", err)
	}
	var resp message.ResponseHead
	if err := st.ReadResponse(ctx, &resp); err != nil {
		t.Fatal(err)
	}
	if body, err := io.ReadAll(st); err != nil || string(body) != "body" {
		t.Fatalf("body %q, %v", body, err)
	}
	if c.Err() != nil || s.Err() != nil {
		t.Fatalf("session closed: client %v, server %v", c.Err(), s.Err())
	}
}

// A reset's reason is for people and logs: a long one (say, quoting a
// hostile request target) is cut, never sent in a frame the peer refuses.
func TestLongResetReasonIsCut(t *testing.T) {
	c, s := headTestPair(t)
	ctx := testContext(t)
	st, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in.Reset(frame.CodeProtocol, "bad request target "+strings.Repeat("%", 2*frame.MinMaxSize))
	var serr *StreamError
	if err := st.ReadResponse(ctx, new(message.ResponseHead)); !errors.As(err, &serr) || serr.Code != frame.CodeProtocol ||
		!strings.HasPrefix(serr.Message, "bad request target %%%") || !strings.HasSuffix(serr.Message, "%...") || len(serr.Message) > maxReasonSize {
		t.Fatalf("reset: %v", err)
	}
	if c.Err() != nil || s.Err() != nil {
		t.Fatalf("session closed: client %v, server %v", c.Err(), s.Err())
	}
}
