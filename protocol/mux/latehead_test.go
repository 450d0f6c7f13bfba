package mux

// The read loop holds back the wake of a RESPONSE head's reader while
// more whole frames are buffered behind it (holdHead). These tests
// play a peer that writes, in one write, a head followed by what could
// keep that wake held for ever if the read loop got it wrong: a frame cut
// short and then silence, a head with FIN, a reset, more heads than the
// loop holds back, websocket frames, compressed data, the connection's
// end. Every wait is bounded: a lost wake fails the test, it does not
// hang it.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// lateWait bounds each wait of these tests: far longer than any wake
// needs, far shorter than the test's own timeout.
const lateWait = 10 * time.Second

// frameBytes encodes one frame.
func frameBytes(h frame.Header, payload []byte) []byte {
	h.Length = uint32(len(payload))
	return append(frame.AppendHeader(nil, h), payload...)
}

// responseBytes encodes a RESPONSE head on stream id.
func responseBytes(id uint32, status uint32, flags frame.Flags) []byte {
	return frameBytes(frame.Header{Type: frame.TypeResponse, StreamID: id, Flags: flags},
		(&message.ResponseHead{Status: status}).Append(nil))
}

// cutShort is the first bytes of a DATA frame on stream id: a whole
// header announcing more payload than follows, then silence.
func cutShort(id uint32) []byte {
	return frame.AppendHeader(nil, frame.Header{Type: frame.TypeData, StreamID: id, Length: 100})
}

// rawServer returns a client session whose peer is a raw server the test
// writes frames for.
func rawServer(t *testing.T) (*Session, *rawPeer) {
	t.Helper()
	return rawSession(t, message.RoleClient)
}

// rawSession returns a session of the given role whose peer is raw, once
// their HELLOs are exchanged.
func rawSession(t *testing.T, role int) (*Session, *rawPeer) {
	t.Helper()
	a, b := unixPair(t)
	s := newSession(a, Config{Role: role, KeepaliveInterval: -1})
	t.Cleanup(func() {
		s.Close()
		b.Close()
	})
	p := newRawPeer(t, b)
	if role == message.RoleServer {
		p.hello(1 << 20)
		return s, p
	}
	h := message.Hello{Version: message.ProtocolVersion, Role: message.RoleServer, MaxFrameSize: frame.DefaultMaxSize,
		InitialWindow: 1 << 20, MaxStreams: 1000}
	p.send(frame.Header{Type: frame.TypeHello}, h.Append(nil))
	if fh, _ := p.next(); fh.Type != frame.TypeHello {
		t.Fatalf("first frame from the session is %v, want HELLO", fh)
	}
	return s, p
}

// openN opens n streams on c and reads their REQUESTs on the raw peer.
func openN(t *testing.T, c *Session, p *rawPeer, n int, kind uint32) []*Stream {
	t.Helper()
	ctx := boundedContext(t)
	sts := make([]*Stream, n)
	for i := range sts {
		st, err := c.Open(ctx, &message.RequestHead{Kind: kind, Method: []byte("GET"), Path: []byte("/")}, nil, kind != message.KindWebSocket)
		if err != nil {
			t.Fatal(err)
		}
		sts[i] = st
		if h, _ := p.expect(frame.TypeRequest); h.StreamID != st.ID() {
			t.Fatalf("REQUEST on stream %d, want %d", h.StreamID, st.ID())
		}
	}
	return sts
}

func boundedContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), lateWait)
	t.Cleanup(cancel)
	return ctx
}

// readHead waits (bounded) for st's RESPONSE head.
func readHead(t *testing.T, st *Stream) message.ResponseHead {
	t.Helper()
	var rh message.ResponseHead
	if err := st.ReadResponse(boundedContext(t), &rh); err != nil {
		t.Fatalf("stream %d: ReadResponse: %v (a head whose reader was never woken?)", st.ID(), err)
	}
	return rh
}

// A head followed in the same write by a frame cut short, then silence:
// the read loop must wake the head's reader before it waits for the rest.
func TestLateHeadPeerStallsMidFrame(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail func(id uint32) []byte
	}{
		{"header cut short", func(id uint32) []byte {
			return frame.AppendHeader(nil, frame.Header{Type: frame.TypeData, StreamID: id, Length: 5})[:4]
		}},
		{"payload cut short", func(id uint32) []byte { return append(cutShort(id), "abc"...) }},
		{"whole frames, then one cut short", func(id uint32) []byte {
			b := frameBytes(frame.Header{Type: frame.TypeData, StreamID: id}, []byte("first "))
			b = append(b, frameBytes(frame.Header{Type: frame.TypePing}, make([]byte, 8))...)
			return append(b, cutShort(id)...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, p := rawServer(t)
			st := openN(t, c, p, 1, message.KindHTTP)[0]
			p.sendRaw(append(responseBytes(st.ID(), 200, 0), tc.tail(st.ID())...))
			if rh := readHead(t, st); rh.Status != 200 {
				t.Fatalf("status %d", rh.Status)
			}
		})
	}
}

// A head with FIN, alone or with whole frames behind it, and heads whose
// stream the peer resets in the same write.
func TestLateHeadWithFinOrReset(t *testing.T) {
	c, p := rawServer(t)
	sts := openN(t, c, p, 3, message.KindHTTP)
	ping := frameBytes(frame.Header{Type: frame.TypePing}, make([]byte, 8))
	reset := frameBytes(frame.Header{Type: frame.TypeReset, StreamID: sts[2].ID()},
		(&message.Reset{Code: frame.CodeAppError, Message: []byte("gone")}).Append(nil))
	var b []byte
	b = append(b, responseBytes(sts[0].ID(), 204, frame.FlagFin)...)
	b = append(b, ping...)
	b = append(b, responseBytes(sts[1].ID(), 204, frame.FlagFin)...)
	b = append(b, responseBytes(sts[2].ID(), 200, 0)...)
	b = append(b, reset...)
	b = append(b, ping...)
	p.sendRaw(b)
	for _, st := range sts[:2] {
		if rh := readHead(t, st); rh.Status != 204 {
			t.Fatalf("status %d", rh.Status)
		}
		st.SetReadDeadline(time.Now().Add(lateWait))
		if n, err := st.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("stream %d after a head with FIN: %d, %v; want io.EOF", st.ID(), n, err)
		}
	}
	readHead(t, sts[2])
	sts[2].SetReadDeadline(time.Now().Add(lateWait))
	var serr *StreamError
	if _, err := sts[2].Read(make([]byte, 1)); !errors.As(err, &serr) || serr.Code != frame.CodeAppError {
		t.Fatalf("a reset stream's read: %v, want its reset", err)
	}
}

// Far more heads in one write than the read loop holds back, then a frame
// cut short: every reader is woken.
func TestLateHeadsMoreThanTheLoopHolds(t *testing.T) {
	c, p := rawServer(t)
	n := 3*maxLateHeads + 5
	sts := openN(t, c, p, n, message.KindHTTP)
	var b []byte
	for _, st := range sts {
		b = append(b, responseBytes(st.ID(), 200, 0)...)
		b = append(b, frameBytes(frame.Header{Type: frame.TypeData, StreamID: st.ID(), Flags: frame.FlagFin}, []byte("x"))...)
	}
	b = append(b, cutShort(sts[0].ID()+2*uint32(n))...)
	p.sendRaw(b)
	for _, st := range sts {
		readHead(t, st)
		st.SetReadDeadline(time.Now().Add(lateWait))
		if got, err := io.ReadAll(st); err != nil || string(got) != "x" {
			t.Fatalf("stream %d: %q, %v", st.ID(), got, err)
		}
	}
}

// The connection ends (or the session is closed) right after heads and
// whole frames: the heads' readers get their heads.
func TestLateHeadThenConnectionEnds(t *testing.T) {
	for _, closeConn := range []bool{true, false} {
		c, p := rawServer(t)
		sts := openN(t, c, p, 2, message.KindHTTP)
		var b []byte
		for _, st := range sts {
			b = append(b, responseBytes(st.ID(), 200, 0)...)
		}
		b = append(b, frameBytes(frame.Header{Type: frame.TypeData, StreamID: sts[1].ID()}, []byte("y"))...)
		if closeConn {
			p.sendRaw(b)
			p.conn.Close()
		} else {
			// A frame the session refuses: GOAWAY, then the end.
			b = append(b, frameBytes(frame.Header{Type: 0x7f}, nil)...)
			p.sendRaw(b)
		}
		for _, st := range sts {
			readHead(t, st)
		}
		waitClosed(t, c)
	}
}

// A websocket's acceptance with messages behind it, a websocket closed
// before its acceptance (WS_CLOSE, never held), and compressed data
// behind a head.
func TestLateHeadWebSocketAndCompressed(t *testing.T) {
	c, p := rawServer(t)
	ws := openN(t, c, p, 2, message.KindWebSocket)
	plain := openN(t, c, p, 1, message.KindHTTP)[0]
	zeros := append([]byte{byte(message.CompressZstd)}, zstdZeros(t, 10000)...)
	var b []byte
	b = append(b, responseBytes(ws[0].ID(), 101, 0)...)
	b = append(b, frameBytes(frame.Header{Type: frame.TypeWSMessage, StreamID: ws[0].ID(), Flags: frame.FlagText}, []byte("hi"))...)
	b = append(b, frameBytes(frame.Header{Type: frame.TypeWSClose, StreamID: ws[1].ID()},
		(&message.WSClose{Code: 1008, Reason: []byte("denied")}).Append(nil))...)
	b = append(b, responseBytes(plain.ID(), 200, 0)...)
	b = append(b, frameBytes(frame.Header{Type: frame.TypeData, StreamID: plain.ID(), Flags: frame.FlagCompressed | frame.FlagFin}, zeros)...)
	b = append(b, cutShort(plain.ID())...)
	p.sendRaw(b)

	if rh := readHead(t, ws[0]); rh.Status != 101 {
		t.Fatalf("websocket accepted with %d", rh.Status)
	}
	ws[0].SetReadDeadline(time.Now().Add(lateWait))
	if text, msg, err := ws[0].ReadMessage(1 << 10); err != nil || !text || string(msg) != "hi" {
		t.Fatalf("message: %v %q %v", text, msg, err)
	}
	var closeErr *WSCloseError
	if err := ws[1].ReadResponse(boundedContext(t), new(message.ResponseHead)); !errors.As(err, &closeErr) || closeErr.Code != 1008 {
		t.Fatalf("a websocket denied before acceptance: %v", err)
	}
	readHead(t, plain)
	plain.SetReadDeadline(time.Now().Add(lateWait))
	if got, err := io.ReadAll(plain); err != nil || !bytes.Equal(got, make([]byte, 10000)) {
		t.Fatalf("compressed body: %d bytes, %v", len(got), err)
	}
}

// The guest's side (a server session, init's) reads the RESPONSE to the
// streams it opens toward the host the same way.
func TestLateHeadOnTheServerSide(t *testing.T) {
	s, p := rawSession(t, message.RoleServer)
	st, err := s.Open(boundedContext(t), &message.RequestHead{Method: []byte("GET"), Path: []byte("/api")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	p.expect(frame.TypeRequest)
	body := frameBytes(frame.Header{Type: frame.TypeData, StreamID: st.ID()}, []byte("answer"))
	p.sendRaw(append(append(responseBytes(st.ID(), 200, 0), body...), cutShort(st.ID())...))
	readHead(t, st)
	if got := st.Buffered(); got != len("answer") {
		t.Fatalf("right after the head, %d bytes buffered, want the body sent with it", got)
	}
}

// A reader that comes to ReadResponse without waiting, while the read loop
// has applied the head but not yet the frames read with it, must not see
// the head alone: the head is held, not only its wake-up. (CI once saw a
// head without its body this way, on a loaded machine.) The peer writes,
// in one write, stream A's head, thousands of small frames for stream B,
// then A's body with FIN; A's reader polls without waiting meanwhile.
func TestLateHeadIsHeldFromAReaderThatDoesNotWait(t *testing.T) {
	c, p := rawServer(t)
	polled, cancel := context.WithCancel(context.Background())
	cancel()
	for round := range 20 {
		sts := openN(t, c, p, 2, message.KindHTTP)
		a, b := sts[0], sts[1]
		var burst []byte
		burst = append(burst, responseBytes(b.ID(), 200, 0)...)
		burst = append(burst, responseBytes(a.ID(), 200, 0)...)
		for range 4000 {
			burst = append(burst, frameBytes(frame.Header{Type: frame.TypeData, StreamID: b.ID()}, []byte{'b'})...)
		}
		burst = append(burst, frameBytes(frame.Header{Type: frame.TypeData, StreamID: a.ID(), Flags: frame.FlagFin}, []byte("all of it"))...)

		got := make(chan string, 1)
		polling := make(chan struct{})
		go func() {
			close(polling)
			var rh message.ResponseHead
			deadline := time.Now().Add(lateWait)
			for a.ReadResponse(polled, &rh) != nil {
				if time.Now().After(deadline) {
					got <- "no head"
					return
				}
			}
			buf := make([]byte, 64)
			n, err := a.TryRead(buf)
			got <- fmt.Sprintf("%q, %v", buf[:n], err)
		}()
		<-polling
		p.sendRaw(burst)
		if g, want := <-got, fmt.Sprintf("%q, %v", "all of it", io.EOF); g != want {
			t.Fatalf("round %d: right after the head, TryRead gave %s; want %s", round, g, want)
		}
		b.Close()
	}
}
