package mux

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// rawPeer speaks frames by hand, to play a misbehaving peer.
type rawPeer struct {
	t    testing.TB
	conn net.Conn
	r    *frame.Reader
}

func newRawPeer(t testing.TB, conn net.Conn) *rawPeer {
	return &rawPeer{t: t, conn: conn, r: frame.NewReader(conn, frame.MaxMaxSize)}
}

func (p *rawPeer) send(h frame.Header, payload []byte) {
	p.t.Helper()
	h.Length = uint32(len(payload))
	if _, err := p.conn.Write(append(frame.AppendHeader(nil, h), payload...)); err != nil {
		p.t.Fatalf("raw peer write: %v", err)
	}
}

func (p *rawPeer) sendRaw(b []byte) {
	p.t.Helper()
	if _, err := p.conn.Write(b); err != nil {
		p.t.Fatalf("raw peer write: %v", err)
	}
}

// hello sends a client HELLO and reads the session's HELLO.
func (p *rawPeer) hello(window uint32) message.Hello {
	p.t.Helper()
	h := message.Hello{Version: 1, Role: message.RoleClient, MaxFrameSize: frame.DefaultMaxSize, InitialWindow: window, MaxStreams: 100}
	p.send(frame.Header{Type: frame.TypeHello}, h.Append(nil))
	fh, payload := p.next()
	if fh.Type != frame.TypeHello {
		p.t.Fatalf("first frame from session is %v, want HELLO", fh)
	}
	var got message.Hello
	if err := got.Unmarshal(payload); err != nil {
		p.t.Fatal(err)
	}
	return got
}

// next reads the next frame, failing the test after a few seconds.
func (p *rawPeer) next() (frame.Header, []byte) {
	p.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, payload, err := p.r.ReadFrame()
	if err != nil {
		p.t.Fatalf("raw peer read: %v", err)
	}
	return h, append([]byte(nil), payload...)
}

// expect reads frames until one of type t arrives (skipping others).
func (p *rawPeer) expect(t frame.Type) (frame.Header, []byte) {
	p.t.Helper()
	for {
		h, payload := p.next()
		if h.Type == t {
			return h, payload
		}
	}
}

func (p *rawPeer) expectGoAway(code uint32) message.GoAway {
	p.t.Helper()
	_, payload := p.expect(frame.TypeGoAway)
	var g message.GoAway
	if err := g.Unmarshal(payload); err != nil {
		p.t.Fatal(err)
	}
	if g.Code != code {
		p.t.Fatalf("GOAWAY code %s (%s), want %s", frame.CodeName(g.Code), g.Message, frame.CodeName(code))
	}
	return g
}

func (p *rawPeer) expectReset(stream, code uint32) message.Reset {
	p.t.Helper()
	h, payload := p.expect(frame.TypeReset)
	var r message.Reset
	if err := r.Unmarshal(payload); err != nil {
		p.t.Fatal(err)
	}
	if h.StreamID != stream || r.Code != code {
		p.t.Fatalf("RESET on stream %d code %s (%s), want stream %d %s", h.StreamID, frame.CodeName(r.Code), r.Message, stream, frame.CodeName(code))
	}
	return r
}

func request(path string) []byte {
	return (&message.RequestHead{Method: []byte("GET"), Path: []byte(path)}).Append(nil)
}

func windowUpdate(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

// waitClosed waits for the session to close and returns its error.
func waitClosed(t testing.TB, s *Session) error {
	t.Helper()
	select {
	case <-s.Done():
		return s.Err()
	case <-time.After(5 * time.Second):
		t.Fatal("session did not close")
		return nil
	}
}

func wantProtocolError(t testing.TB, err error, code uint32) {
	t.Helper()
	var perr *ProtocolError
	if !errors.As(err, &perr) || perr.Code != code {
		t.Fatalf("session error %v, want protocol error %s", err, frame.CodeName(code))
	}
}
