package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
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
	mode         int
	buf          []byte  // received body bytes; unread part is buf[off:]
	bufPooled    *[]byte // the pool's handle for buf, when buf came from it
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

// inlineHeadSize is the largest head kept inside the Stream itself; a
// typical API request or response head (a handful of headers) fits.
const inlineHeadSize = 256

// setHead keeps a copy of a received head.
func (st *Stream) setHead(p []byte) {
	if len(p) <= inlineHeadSize {
		st.head = st.headInline[:len(p):len(p)]
		copy(st.head, p)
		return
	}
	st.head = append(make([]byte, 0, len(p)), p...)
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

// ---- heads ----

// Head returns the raw REQUEST payload of an accepted stream, or the
// RESPONSE payload of an opened stream once ReadResponse returned.
func (st *Stream) Head() []byte {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.head
}

// RequestHead decodes the REQUEST head of an accepted stream into h. Byte
// fields alias the stream's copy and stay valid for the stream's lifetime.
func (st *Stream) RequestHead(h *message.RequestHead) error {
	if st.local {
		return errors.New("mux: RequestHead on a stream this side opened")
	}
	return h.Unmarshal(st.Head())
}

// ReadResponse waits for the RESPONSE head of a stream this side opened and
// decodes it into h. A websocket denied before acceptance yields a
// *WSCloseError.
func (st *Stream) ReadResponse(ctx context.Context, h *message.ResponseHead) error {
	raw, err := st.ReadResponseRaw(ctx)
	if err != nil {
		return err
	}
	return h.Unmarshal(raw)
}

// ReadResponseRaw is ReadResponse without decoding: it returns the RESPONSE
// payload, valid for the stream's lifetime.
func (st *Stream) ReadResponseRaw(ctx context.Context) ([]byte, error) {
	if !st.local {
		return nil, errors.New("mux: ReadResponse on a stream the peer opened")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for !st.headReceived {
		switch {
		case st.gotWSClose:
			return nil, st.wsCloseErrorLocked()
		case st.err != nil:
			return nil, st.err
		case st.remoteFin:
			return nil, &StreamError{StreamID: st.id, Code: frame.CodeProtocol, Message: "stream ended without a response", Remote: true}
		}
		if err := st.wait(ctx, &st.readable, st.readDeadline); err != nil {
			return nil, err
		}
	}
	return st.head, nil
}

// WriteResponse sends the RESPONSE head of an accepted stream, followed in
// the same write by as much of body as the send window allows (the rest is
// written before it returns). With endStream the response ends after body.
func (st *Stream) WriteResponse(h *message.ResponseHead, body []byte, endStream bool) error {
	return st.writeResponse(frameSpec{h: frame.Header{Type: frame.TypeResponse, StreamID: st.id}, enc: h}, body, endStream)
}

// WriteResponseRaw is WriteResponse with the RESPONSE payload already
// encoded, e.g. one relayed from another session (see ReadResponseRaw).
func (st *Stream) WriteResponseRaw(head []byte, body []byte, endStream bool) error {
	return st.writeResponse(frameSpec{h: frame.Header{Type: frame.TypeResponse, StreamID: st.id}, payload: head}, body, endStream)
}

func (st *Stream) writeResponse(head frameSpec, body []byte, endStream bool) error {
	if st.local {
		return errors.New("mux: WriteResponse on a stream this side opened")
	}
	st.mu.Lock()
	if err := st.writableLocked(); err != nil {
		st.mu.Unlock()
		return err
	}
	if st.responseSent {
		st.mu.Unlock()
		return errors.New("mux: response already sent")
	}
	st.responseSent = true
	st.mu.Unlock()
	rest, err := st.writeHead(head, body, endStream)
	if errors.Is(err, ErrHeadTooLarge) {
		// Nothing was sent: the stream may still be answered.
		st.mu.Lock()
		st.responseSent = false
		st.mu.Unlock()
		return err
	}
	if err == nil && len(rest) > 0 {
		_, err = st.writeData(rest, endStream)
	}
	return err
}

// writeHead writes a head frame and, in the same write, a first DATA frame
// with as much of body as the window allows. It returns the part of body
// still to be written. A head larger than the peer's frames is
// ErrHeadTooLarge, with nothing sent and the stream as it was.
func (st *Stream) writeHead(head frameSpec, body []byte, endStream bool) ([]byte, error) {
	head.limit = st.s.peer.MaxFrameSize
	frames := [2]frameSpec{head}
	nf := 1
	whole := body
	st.mu.Lock()
	if len(body) == 0 {
		if endStream {
			frames[0].h.Flags |= frame.FlagFin
			st.localFin = true
		}
	} else {
		n := int(max(0, min(int64(len(body)), st.sendWindow, int64(st.s.peer.MaxFrameSize))))
		if n > 0 {
			st.sendWindow -= int64(n)
			data := frameSpec{h: frame.Header{Type: frame.TypeData, StreamID: st.id}, payload: body[:n]}
			if endStream && n == len(body) {
				data.h.Flags |= frame.FlagFin
				st.localFin = true
			}
			frames[1], nf = data, 2
			body = body[n:]
		}
	}
	fin := st.localFin
	st.mu.Unlock()
	err := st.s.w.write(frames[:nf], false)
	if errors.Is(err, ErrHeadTooLarge) {
		st.mu.Lock()
		st.sendWindow += int64(len(whole) - len(body))
		st.localFin = false
		st.mu.Unlock()
		return whole, err
	}
	if fin {
		st.maybeRemove()
	}
	return body, err
}

// writableLocked reports why nothing more may be written, if so.
func (st *Stream) writableLocked() error {
	switch {
	case st.err != nil:
		return st.err
	case st.writeErr != nil:
		return st.writeErr
	case st.localFin:
		return ErrWriteClosed
	}
	return nil
}

// ---- body: reading ----

// Read reads body bytes. It returns io.EOF once the peer has finished and
// every byte has been read; Trailers then returns its trailers.
func (st *Stream) Read(p []byte) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for {
		if n, done, err := st.readNowLocked(p, "Read"); done {
			return n, err
		}
		if err := st.wait(nil, &st.readable, st.readDeadline); err != nil {
			return 0, err
		}
	}
}

// readNowLocked is what Read and TryRead do without waiting: copy out
// buffered bytes, or report the end or the failure of the stream. done is
// false when there is nothing to report yet.
func (st *Stream) readNowLocked(p []byte, caller string) (n int, done bool, err error) {
	if st.mode == modeWebSocket {
		return 0, true, errors.New("mux: " + caller + " on a websocket stream, use ReadMessage")
	}
	if n := len(st.buf) - st.off; n > 0 {
		n = copy(p, st.buf[st.off:])
		st.consumeLocked(n, n)
		return n, true, nil
	}
	switch {
	case st.remoteFin:
		return 0, true, io.EOF
	case st.err != nil:
		return 0, true, st.err
	}
	return 0, false, nil
}

// TryRead is Read without waiting: it returns what is buffered (possibly
// nothing, with a nil error), and io.EOF once the peer has finished and
// everything was read, together with the last bytes when they are the
// ones returned. Relays use it to send a head together with the body
// bytes that arrived with it, and to know whether that body is complete.
func (st *Stream) TryRead(p []byte) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	n, _, err := st.readNowLocked(p, "TryRead")
	if err == nil && n > 0 && st.remoteFin && st.off == len(st.buf) {
		err = io.EOF // nothing follows the bytes just read
	}
	return n, err
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

// consumeLocked marks n buffered bytes as read and returns credit worth
// cost bytes to the peer once half a window has been read.
func (st *Stream) consumeLocked(n int, cost int) {
	st.off += n
	if st.off == len(st.buf) {
		st.buf, st.off = st.buf[:0], 0
		if st.remoteFin && st.bufPooled != nil {
			// Nothing more will arrive: the buffer can serve another stream.
			putRecvBuf(st.bufPooled, st.buf)
			st.buf, st.bufPooled = nil, nil
		}
	}
	if st.remoteFin || st.err != nil {
		return
	}
	st.consumed += uint32(cost)
	if st.consumed >= st.s.cfg.InitialWindow/2 {
		inc := st.consumed
		st.consumed = 0
		st.recvCredit += inc
		var p [4]byte
		binary.BigEndian.PutUint32(p[:], inc)
		_ = st.s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeWindowUpdate, StreamID: st.id}, payload: p[:]}, true)
	}
}

// Buffered returns how many received bytes wait to be read. It never
// exceeds the receive window the peer was granted.
func (st *Stream) Buffered() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.buf) - st.off
}

// Trailers returns the trailers the peer sent with its END, if any. It is
// meaningful after Read returned io.EOF.
func (st *Stream) Trailers() ([]message.HeaderField, error) {
	st.mu.Lock()
	raw := st.trailers
	st.mu.Unlock()
	var e message.End
	if err := e.Unmarshal(raw); err != nil {
		return nil, err
	}
	return e.Trailers, nil
}

// ---- body: writing ----

// Write sends p as DATA frames, waiting for send window as needed.
func (st *Stream) Write(p []byte) (int, error) {
	return st.writeData(p, false)
}

// WriteLast sends p as the last body bytes, ending the stream in the same
// frame.
func (st *Stream) WriteLast(p []byte) (int, error) {
	return st.writeData(p, true)
}

func (st *Stream) writeData(p []byte, fin bool) (int, error) {
	written := 0
	for {
		st.mu.Lock()
		if err := st.writableLocked(); err != nil {
			st.mu.Unlock()
			return written, err
		}
		if len(p) == 0 {
			if !fin {
				st.mu.Unlock()
				return written, nil
			}
			st.localFin = true
			st.mu.Unlock()
			err := st.s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeData, Flags: frame.FlagFin, StreamID: st.id}}, false)
			st.maybeRemove()
			return written, err
		}
		for st.sendWindow <= 0 && st.err == nil && st.writeErr == nil {
			if err := st.wait(nil, &st.writable, st.writeDeadline); err != nil {
				st.mu.Unlock()
				return written, err
			}
		}
		if err := st.writableLocked(); err != nil {
			st.mu.Unlock()
			return written, err
		}
		n := int(min(int64(len(p)), st.sendWindow, int64(st.s.peer.MaxFrameSize)))
		st.sendWindow -= int64(n)
		last := fin && n == len(p)
		if last {
			st.localFin = true
		}
		st.mu.Unlock()

		var flags frame.Flags
		if last {
			flags = frame.FlagFin
		}
		if err := st.s.sendPayload(frame.Header{Type: frame.TypeData, Flags: flags, StreamID: st.id}, p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
		if last {
			st.maybeRemove()
			return written, nil
		}
	}
}

// CloseWrite ends this side of the stream without trailers.
func (st *Stream) CloseWrite() error { return st.CloseWriteTrailers(nil) }

// CloseWriteTrailers ends this side of the stream with an END frame carrying
// trailers. Trailers larger than the peer's frames are ErrHeadTooLarge,
// with the stream still open.
func (st *Stream) CloseWriteTrailers(trailers []message.HeaderField) error {
	st.mu.Lock()
	if err := st.writableLocked(); err != nil {
		st.mu.Unlock()
		return err
	}
	st.localFin = true
	st.mu.Unlock()
	end := message.End{Trailers: trailers}
	err := st.s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeEnd, Flags: frame.FlagFin, StreamID: st.id}, enc: &end,
		limit: st.s.peer.MaxFrameSize}, false)
	if errors.Is(err, ErrHeadTooLarge) {
		st.mu.Lock()
		st.localFin = false
		st.mu.Unlock()
		return err
	}
	st.maybeRemove()
	return err
}

// ---- termination ----

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

// ---- inbound frames (read loop) ----

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
	st.mu.Unlock()
	st.signal(&st.readable)
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
	if st.buf == nil {
		st.bufPooled = getRecvBuf()
		st.buf = (*st.bufPooled)[:0]
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

// Receive buffers of small bodies are reused: most request and response
// bodies are small, and a fresh buffer per stream is an allocation on
// each side of every round trip.
const (
	recvBufSize    = 4 << 10   // capacity of a new pooled buffer
	recvBufPoolMax = 512 << 10 // larger buffers are left to the GC
)

var recvBufPool = sync.Pool{New: func() any { b := make([]byte, 0, recvBufSize); return &b }}

// getRecvBuf returns a pooled buffer's handle.
func getRecvBuf() *[]byte {
	return recvBufPool.Get().(*[]byte)
}

// putRecvBuf returns the buffer b (which may have grown from the one handle
// held) to the pool, unless it grew too large.
func putRecvBuf(handle *[]byte, b []byte) {
	if cap(b) > recvBufPoolMax {
		return
	}
	*handle = b[:0]
	recvBufPool.Put(handle)
}
