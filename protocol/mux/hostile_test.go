package mux

import (
	"bytes"
	"io"
	"testing"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// hostileSetup starts a server session and a raw client peer.
func hostileSetup(t *testing.T, cfg Config) (*Session, *rawPeer) {
	a, b := unixPair(t)
	s := Server(b, cfg)
	t.Cleanup(func() { s.Close(); a.Close() })
	return s, newRawPeer(t, a)
}

// Connection-level violations: the session answers GOAWAY with a reason
// and closes, without panicking.
func TestHostilePeerConnectionErrors(t *testing.T) {
	type step func(p *rawPeer)
	cases := []struct {
		name  string
		steps step
		code  uint32
	}{
		{"garbage instead of hello", func(p *rawPeer) { p.sendRaw([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }, frame.CodeProtocol},
		{"frame before hello", func(p *rawPeer) { p.send(frame.Header{Type: frame.TypeData, StreamID: 1}, []byte("x")) }, frame.CodeProtocol},
		{"wrong version", func(p *rawPeer) {
			p.send(frame.Header{Type: frame.TypeHello}, (&message.Hello{Version: 99, Role: 1, MaxFrameSize: 1 << 16, InitialWindow: 1, MaxStreams: 1}).Append(nil))
		}, frame.CodeVersion},
		{"same role", func(p *rawPeer) {
			p.send(frame.Header{Type: frame.TypeHello}, (&message.Hello{Version: 1, Role: 2, MaxFrameSize: 1 << 16, InitialWindow: 1, MaxStreams: 1}).Append(nil))
		}, frame.CodeProtocol},
		{"unknown frame type", func(p *rawPeer) { p.hello(1 << 16); p.send(frame.Header{Type: 0x42, StreamID: 1}, nil) }, frame.CodeProtocol},
		{"huge declared length", func(p *rawPeer) {
			p.hello(1 << 16)
			p.sendRaw(frame.AppendHeader(nil, frame.Header{Type: frame.TypeData, StreamID: 1, Length: 1 << 31}))
		}, frame.CodeFrameSize},
		{"data on never-opened stream", func(p *rawPeer) {
			p.hello(1 << 16)
			p.send(frame.Header{Type: frame.TypeData, StreamID: 7}, []byte("x"))
		}, frame.CodeProtocol},
		{"request on server-side id", func(p *rawPeer) {
			p.hello(1 << 16)
			p.send(frame.Header{Type: frame.TypeRequest, StreamID: 2}, request("/"))
		}, frame.CodeProtocol},
		{"reused stream id", func(p *rawPeer) {
			p.hello(1 << 16)
			p.send(frame.Header{Type: frame.TypeRequest, StreamID: 5}, request("/"))
			p.send(frame.Header{Type: frame.TypeRequest, StreamID: 3}, request("/"))
		}, frame.CodeProtocol},
		{"second hello", func(p *rawPeer) {
			p.hello(1 << 16)
			p.send(frame.Header{Type: frame.TypeHello}, (&message.Hello{Version: 1, Role: 1, MaxFrameSize: 1 << 16, InitialWindow: 1, MaxStreams: 1}).Append(nil))
		}, frame.CodeProtocol},
		{"ping with flags of another type", func(p *rawPeer) {
			p.hello(1 << 16)
			p.send(frame.Header{Type: frame.TypePing, Flags: frame.FlagFin}, make([]byte, 8))
		}, frame.CodeProtocol},
		{"body in a shared buffer never given", func(p *rawPeer) {
			p.hello(1 << 16)
			p.send(frame.Header{Type: frame.TypeDataShared, StreamID: 1}, make([]byte, 12))
		}, frame.CodeProtocol},
		{"malformed goaway", func(p *rawPeer) { p.hello(1 << 16); p.send(frame.Header{Type: frame.TypeGoAway}, []byte{0xff}) }, frame.CodeProtocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, p := hostileSetup(t, Config{})
			c.steps(p)
			p.expectGoAway(c.code)
			wantProtocolError(t, waitClosed(t, s), c.code)
		})
	}
}

func TestTruncatedStreamClosesSession(t *testing.T) {
	s, p := hostileSetup(t, Config{})
	p.hello(1 << 16)
	full := append(frame.AppendHeader(nil, frame.Header{Type: frame.TypeData, StreamID: 1, Length: 100}), "only part"...)
	p.sendRaw(full)
	p.conn.Close()
	wantProtocolError(t, waitClosed(t, s), frame.CodeProtocol)
}

// Stream-level violations reset the stream and leave the session serving.
func TestHostilePeerStreamErrorsKeepSession(t *testing.T) {
	s, p := hostileSetup(t, Config{InitialWindow: 1024, MaxStreams: 2})
	ctx := testContext(t)
	p.hello(1 << 16)

	// Window overrun: 1 KiB window, 2 KiB sent.
	p.send(frame.Header{Type: frame.TypeRequest, StreamID: 1}, request("/overrun"))
	p.send(frame.Header{Type: frame.TypeData, StreamID: 1}, make([]byte, 2048))
	p.expectReset(1, frame.CodeFlowControl)
	st1, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(st1); err == nil {
		t.Fatal("reading the overrun stream succeeded")
	}

	// Frames after end of stream.
	p.send(frame.Header{Type: frame.TypeRequest, Flags: frame.FlagFin, StreamID: 3}, request("/done"))
	p.send(frame.Header{Type: frame.TypeData, StreamID: 3}, []byte("late"))
	p.expectReset(3, frame.CodeStreamClosed)
	if _, err := s.Accept(ctx); err != nil {
		t.Fatal(err)
	}

	// Bad window increment.
	p.send(frame.Header{Type: frame.TypeRequest, StreamID: 5}, request("/w"))
	p.send(frame.Header{Type: frame.TypeWindowUpdate, StreamID: 5}, windowUpdate(0))
	p.expectReset(5, frame.CodeFlowControl)
	if _, err := s.Accept(ctx); err != nil {
		t.Fatal(err)
	}

	// Too many concurrent streams: 2 allowed, the third is refused.
	p.send(frame.Header{Type: frame.TypeRequest, StreamID: 7}, request("/a"))
	p.send(frame.Header{Type: frame.TypeRequest, StreamID: 9}, request("/b"))
	p.send(frame.Header{Type: frame.TypeRequest, StreamID: 11}, request("/c"))
	p.expectReset(11, frame.CodeRefusedStream)
	a, _ := s.Accept(ctx)
	b, _ := s.Accept(ctx)
	a.Reset(frame.CodeCancel, "")
	b.Reset(frame.CodeCancel, "")
	p.expectReset(7, frame.CodeCancel)
	p.expectReset(9, frame.CodeCancel)

	// Frames on a stream that is fully closed get STREAM_CLOSED.
	p.send(frame.Header{Type: frame.TypeEnd, Flags: frame.FlagFin, StreamID: 7}, nil)
	p.expectReset(7, frame.CodeStreamClosed)

	// The session still serves a good request.
	p.send(frame.Header{Type: frame.TypeRequest, StreamID: 13}, request("/good"))
	p.send(frame.Header{Type: frame.TypeData, Flags: frame.FlagFin, StreamID: 13}, []byte("ping"))
	st, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(st)
	if err != nil || string(body) != "ping" {
		t.Fatalf("good stream body %q, %v", body, err)
	}
	if err := st.WriteResponse(&message.ResponseHead{Status: 200}, []byte("pong"), true); err != nil {
		t.Fatal(err)
	}
	h, _ := p.expect(frame.TypeResponse)
	if h.StreamID != 13 {
		t.Fatalf("response on stream %d", h.StreamID)
	}
	h, payload := p.expect(frame.TypeData)
	if h.StreamID != 13 || !h.Has(frame.FlagFin) || !bytes.Equal(payload, []byte("pong")) {
		t.Fatalf("data %v %q", h, payload)
	}
	if s.Err() != nil {
		t.Fatalf("session closed: %v", s.Err())
	}
}

// A compressed frame that would expand past the frame limit is refused.
func TestCompressionBombRefused(t *testing.T) {
	s, p := hostileSetup(t, Config{})
	p.hello(1 << 16)
	p.send(frame.Header{Type: frame.TypeRequest, StreamID: 1}, request("/"))
	// A zstd frame declaring 1 GiB of zeros.
	bomb := []byte{message.CompressZstd}
	bomb = append(bomb, zstdZeros(t, 1<<20)...)
	p.send(frame.Header{Type: frame.TypeData, Flags: frame.FlagCompressed, StreamID: 1}, bomb)
	p.expectReset(1, frame.CodeCompression)
	if s.Err() != nil {
		t.Fatalf("session closed: %v", s.Err())
	}
}
