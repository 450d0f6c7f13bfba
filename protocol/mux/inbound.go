package mux

// A stream's side of the read loop: applying each frame the peer sent on
// it, charging its payload to the receive window, and the peer's RESET.

import (
	"encoding/binary"
	"slices"
	"unsafe"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// streamError resets the stream for a peer's violation of stream rules.
func (st *Stream) streamError(code uint32, msg string) *frame.Error {
	st.Reset(code, msg)
	return nil
}

// handleFrame applies one frame from the read loop. Stream-level violations
// reset the stream; a non-nil result closes the session.
func (st *Stream) handleFrame(h frame.Header, p []byte) *frame.Error {
	switch h.Type {
	case frame.TypeReset:
		return st.handleReset(p)
	case frame.TypeWindowUpdate:
		inc := binary.BigEndian.Uint32(p)
		st.mu.Lock()
		if inc == 0 || st.sendWindow+int64(inc) > maxWindow {
			st.mu.Unlock()
			return st.streamError(frame.CodeFlowControl, "bad window increment")
		}
		st.sendWindow += int64(inc)
		st.mu.Unlock()
		st.signal(&st.writable)
		return nil
	}

	st.mu.Lock()
	if st.remoteFin {
		st.mu.Unlock()
		return st.streamError(frame.CodeStreamClosed, h.Type.String()+" after end of stream")
	}
	if st.err != nil {
		// Reset locally; frames still in flight are dropped.
		st.mu.Unlock()
		return nil
	}
	if st.local && !st.headReceived && h.Type != frame.TypeResponse && h.Type != frame.TypeWSClose {
		st.mu.Unlock()
		return st.streamError(frame.CodeProtocol, h.Type.String()+" before RESPONSE")
	}
	var violation *frame.Error
	switch h.Type {
	case frame.TypeResponse:
		if !st.local || st.headReceived {
			violation = frame.Errorf(frame.CodeProtocol, "unexpected RESPONSE")
			break
		}
		st.setHead(p)
		st.headReceived = true
		st.headHeld = st.s.holdHead()
	case frame.TypeData:
		violation = st.receivePayloadLocked(h, p, modeData)
	case frame.TypeWSMessage:
		violation = st.receivePayloadLocked(h, p, modeWebSocket)
	case frame.TypeEnd:
		st.trailers = append([]byte(nil), p...)
	case frame.TypeWSClose:
		st.wsClose = append([]byte(nil), p...)
		st.gotWSClose = true
		h.Flags |= frame.FlagFin
	}
	if violation != nil {
		st.mu.Unlock()
		return st.streamError(violation.Code, violation.Reason)
	}
	if h.Has(frame.FlagFin) || h.Type == frame.TypeEnd {
		st.remoteFin = true
	}
	fin := st.remoteFin
	held := h.Type == frame.TypeResponse && st.headHeld
	st.mu.Unlock()
	if held {
		st.s.holdLater(st)
	} else {
		st.signal(&st.readable)
	}
	if fin {
		st.maybeRemove()
	}
	return nil
}

// receivePayloadLocked charges a DATA or WS_MESSAGE frame to the receive
// window and buffers its (decompressed) bytes. It returns the stream error
// to answer with, or nil when the frame was accepted.
func (st *Stream) receivePayloadLocked(h frame.Header, p []byte, mode int) *frame.Error {
	if st.mode != modeNone && st.mode != mode {
		return frame.Errorf(frame.CodeProtocol, "DATA and WS_MESSAGE mixed on one stream")
	}
	if mode == modeData && len(p) == 0 && !h.Has(frame.FlagFin) {
		return nil // empty DATA without FIN carries nothing
	}
	st.mode = mode
	if len(p) > 0 { // (a FIN alone needs no buffer)
		st.ensureBufLocked()
	}
	st.compactLocked(len(p))
	start := len(st.buf)
	if h.Has(frame.FlagCompressed) {
		out, err := st.s.comp.decompress(st.buf, p, st.s.cfg.Decompress)
		if err != nil {
			return frame.Errorf(frame.CodeCompression, "%v", err)
		}
		st.buf = out
	} else {
		st.buf = append(st.buf, p...)
	}
	n := len(st.buf) - start
	cost := uint32(n)
	if mode == modeWebSocket {
		cost += wsFrameCost
		if len(st.frags) > 0 && (st.frags[len(st.frags)-1].flags&frame.FlagMore != 0) &&
			(st.frags[len(st.frags)-1].flags&frame.FlagText) != (h.Flags&frame.FlagText) {
			st.buf = st.buf[:start]
			return frame.Errorf(frame.CodeProtocol, "websocket fragments disagree on text/binary")
		}
	}
	if cost > st.recvCredit {
		st.buf = st.buf[:start]
		return frame.Errorf(frame.CodeFlowControl, "flow control window exceeded: %d bytes, %d allowed", cost, st.recvCredit)
	}
	st.recvCredit -= cost
	if mode == modeWebSocket {
		st.frags = append(st.frags, wsFrag{n: n, flags: h.Flags & (frame.FlagText | frame.FlagMore)})
	}
	return nil
}

// directReadMin is the smallest DATA payload the read loop reads straight
// into its stream's receive buffer (receiveTarget) instead of into its own
// and copying it from there: below it the copy costs less than the
// bookkeeping.
const directReadMin = 16 << 10

// receiveTarget prepares st to take the payload of h, an uncompressed DATA
// frame of at least directReadMin bytes whose header the read loop has
// just read (Session.directTarget), straight into its receive buffer: it
// charges the payload to the receive window and returns where the read
// loop reads it, then calls receiveDirect. It returns nil when the frame
// must go through handleFrame instead: the stream cannot take it as it is
// (reset, finished, no head yet, a websocket, beyond the window:
// handleFrame answers those as before).
//
// Nothing but the read loop appends to the buffer; while the payload is
// read into it, unlocked, the stream may still hand what it holds to
// LendTo (which lends that part, never the part being read into, and
// does not pool a buffer being read into), or Read it (which may start
// the buffer over): receiveDirect finds the bytes where they are.
func (st *Stream) receiveTarget(h frame.Header) []byte {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.remoteFin || st.err != nil || (st.local && !st.headReceived) || st.mode == modeWebSocket ||
		h.Length > st.recvCredit || st.receiving != nil {
		return nil
	}
	n := int(h.Length)
	st.ensureBufLocked()
	st.compactLocked(n)
	st.buf = slices.Grow(st.buf, n)
	st.mode = modeData
	st.recvCredit -= h.Length
	st.receiving = st.bufPooled
	return st.buf[len(st.buf) : len(st.buf)+n]
}

// receiveDirect applies h, whose payload the read loop has read into
// target (from receiveTarget): the bytes join the buffered ones, where
// they lie when nothing moved the buffer meanwhile, copied otherwise; a
// stream reset meanwhile drops them, as handleFrame does.
func (st *Stream) receiveDirect(h frame.Header, target []byte) {
	st.mu.Lock()
	st.receiving = nil
	if st.err != nil {
		st.mu.Unlock()
		return
	}
	if end := st.buf[len(st.buf):cap(st.buf)]; len(end) >= len(target) && unsafe.SliceData(end) == unsafe.SliceData(target) {
		st.buf = st.buf[:len(st.buf)+len(target)]
	} else {
		// The buffer was lent to LendTo or started over by Read.
		st.ensureBufLocked()
		st.compactLocked(len(target))
		st.buf = append(st.buf, target...)
	}
	fin := h.Has(frame.FlagFin)
	if fin {
		st.remoteFin = true
	}
	st.mu.Unlock()
	st.signal(&st.readable)
	if fin {
		st.maybeRemove()
	}
}

// ensureBufLocked gives the stream a receive buffer from the pool when it
// has none (none yet, or it was lent or released).
func (st *Stream) ensureBufLocked() {
	if st.buf == nil {
		st.bufPooled = getRecvBuf()
		st.buf = (*st.bufPooled)[:0]
	}
}

// compactLocked moves unread bytes to the front of the buffer when
// incoming more bytes would not fit behind them, so that the buffer never
// grows past what the window allows and bytes are moved only when that
// saves growing it.
func (st *Stream) compactLocked(incoming int) {
	if st.off > 0 && len(st.buf)+incoming > cap(st.buf) {
		n := copy(st.buf, st.buf[st.off:])
		st.buf, st.off = st.buf[:n], 0
	}
}

func (st *Stream) handleReset(p []byte) *frame.Error {
	var r message.Reset
	if err := r.Unmarshal(p); err != nil {
		return frame.Errorf(frame.CodeProtocol, "bad RESET on stream %d: %v", st.id, err)
	}
	serr := &StreamError{StreamID: st.id, Code: r.Code, Message: string(r.Message), Remote: true}
	st.mu.Lock()
	if st.remoteFin {
		// The peer finished sending and only stops our direction.
		st.writeErr = serr
	} else if st.err == nil {
		st.err = serr
	}
	st.mu.Unlock()
	st.wake()
	st.maybeRemove()
	return nil
}
