package mux

// A stream's state: the Stream itself, waiting for its state to change
// (with deadlines), and its end (finished, reset, or failed with its
// session). Its body and flow control are in body.go, its heads and
// trailers in heads.go, websocket messages in websocket.go, the frames the
// read loop hands it in inbound.go.

import (
	"context"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
)

// What kind of payload a stream has carried so far; DATA and WS_MESSAGE
// must not be mixed on one stream.
const (
	modeNone = iota
	modeData
	modeWebSocket
)

// wsFrag records one received WS_MESSAGE fragment whose bytes sit in the
// stream's receive buffer.
type wsFrag struct {
	n     int
	flags frame.Flags
}

// Stream is one request/response exchange (or websocket) on a session. Read
// and Write carry bodies; one goroutine may read while another writes.
type Stream struct {
	s     *Session
	id    uint32
	local bool // opened by this side

	mu sync.Mutex
	// Wake-up channels, created on first wait (most streams never block on
	// both). Guarded by mu.
	readable chan struct{} // signalled when inbound state changes
	writable chan struct{} // signalled when the send window grows

	// inbound, guarded by mu
	head         []byte               // REQUEST (accepted streams) or RESPONSE (opened streams)
	headInline   [inlineHeadSize]byte // holds head when it fits: one allocation less
	headReceived bool
	headHeld     bool // the head's reader waits for the frames read with it (Session.holdHead)
	mode         int
	buf          []byte  // received body bytes; unread part is buf[off:]
	bufPooled    *[]byte // the pool's handle for buf, when buf came from it
	receiving    *[]byte // the handle of the buffer the read loop reads a payload into (receiveTarget)
	off          int
	frags        []wsFrag
	trailers     []byte
	wsClose      []byte
	gotWSClose   bool
	remoteFin    bool
	recvCredit   uint32 // bytes the peer may still send
	consumed     uint32 // bytes read since the last WINDOW_UPDATE
	// outbound, guarded by mu
	sendWindow   int64
	localFin     bool
	responseSent bool
	// termination, guarded by mu
	err           error // reset or session failure; ends both directions
	writeErr      error // peer reset after finishing: only writes fail
	removed       bool
	doneCh        chan struct{} // closed on removal; created by Done
	readDeadline  time.Time
	writeDeadline time.Time
}

func newStream(s *Session, id uint32, local bool) *Stream {
	return &Stream{
		s:          s,
		id:         id,
		local:      local,
		recvCredit: s.cfg.InitialWindow,
		sendWindow: int64(s.peer.InitialWindow),
	}
}

// ID returns the stream id.
func (st *Stream) ID() uint32 { return st.id }

// signal wakes a waiter on *ch, if one was ever created.
func (st *Stream) signal(ch *chan struct{}) {
	st.mu.Lock()
	c := *ch
	st.mu.Unlock()
	if c != nil {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// wait releases mu until ch is signalled, the deadline passes, ctx ends or
// the session closes; the caller re-checks its condition afterwards.
func (st *Stream) wait(ctx context.Context, chp *chan struct{}, deadline time.Time) error {
	if *chp == nil {
		*chp = make(chan struct{}, 1)
	}
	ch := *chp
	st.mu.Unlock()
	defer st.mu.Lock()
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return ErrTimeout
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	var done <-chan struct{}
	if ctx != nil {
		done = ctx.Done()
	}
	select {
	case <-ch:
		return nil
	case <-timeout:
		return ErrTimeout
	case <-done:
		return ctx.Err()
	case <-st.s.closed:
		return nil
	}
}

// SetDeadline sets both the read and the write deadline.
func (st *Stream) SetDeadline(t time.Time) error {
	st.SetReadDeadline(t)
	return st.SetWriteDeadline(t)
}

// SetReadDeadline makes blocked and future reads fail with ErrTimeout after t.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.mu.Lock()
	st.readDeadline = t
	st.mu.Unlock()
	st.signal(&st.readable)
	return nil
}

// SetWriteDeadline makes blocked and future writes fail with ErrTimeout after t.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	st.writeDeadline = t
	st.mu.Unlock()
	st.signal(&st.writable)
	return nil
}

// Done returns a channel closed when the stream has ended: both sides
// finished, or it was reset (by either side) or its session closed. Err
// then tells which.
func (st *Stream) Done() <-chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.doneCh == nil {
		st.doneCh = make(chan struct{})
		if st.removed {
			close(st.doneCh)
		}
	}
	return st.doneCh
}

// Err returns why the stream was abandoned: a *StreamError for a reset
// (Remote tells who sent it), the session's error, or nil if it was not.
func (st *Stream) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.err != nil {
		return st.err
	}
	return st.writeErr
}

// Reset abandons the stream in both directions and tells the peer why.
func (st *Stream) Reset(code uint32, message string) {
	st.mu.Lock()
	if st.err != nil || (st.localFin && st.remoteFin) {
		st.mu.Unlock()
		return
	}
	st.err = &StreamError{StreamID: st.id, Code: code, Message: message}
	st.mu.Unlock()
	st.s.sendReset(st.id, code, message)
	st.wake()
	st.maybeRemove()
}

// Close finishes the stream: it ends this side if still open, and resets
// with CANCEL if the peer has not finished (its remaining data is unwanted).
func (st *Stream) Close() error {
	st.mu.Lock()
	needEnd := st.writableLocked() == nil
	st.mu.Unlock()
	if needEnd {
		_ = st.CloseWrite()
	}
	st.mu.Lock()
	unfinished := !st.remoteFin && st.err == nil
	st.mu.Unlock()
	if unfinished {
		st.Reset(frame.CodeCancel, "closed by receiver")
	}
	return nil
}

// fail ends the stream with err (session closed, refused by GOAWAY).
func (st *Stream) fail(err error) {
	st.mu.Lock()
	if st.err == nil {
		st.err = err
	}
	st.mu.Unlock()
	st.wake()
	st.maybeRemove()
}

func (st *Stream) wake() {
	st.signal(&st.readable)
	st.signal(&st.writable)
}

// maybeRemove forgets the stream in the session once both directions have
// finished or it was reset.
func (st *Stream) maybeRemove() {
	st.mu.Lock()
	done := !st.removed && (st.err != nil || st.writeErr != nil || (st.localFin && st.remoteFin))
	if done {
		st.removed = true
		if st.doneCh != nil {
			close(st.doneCh)
		}
	}
	st.mu.Unlock()
	if done {
		st.s.removeStream(st)
	}
}
