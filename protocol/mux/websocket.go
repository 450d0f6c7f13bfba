package mux

import (
	"errors"
	"io"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// Websocket messages travel as WS_MESSAGE fragments under the stream's
// flow-control window (SPEC.md 5.5). WriteFragment and ReadFragment carry
// a message part by part, so a relay holds one buffer per direction
// whatever the message's size; WriteMessage and ReadMessage are the whole-
// message forms for endpoints that need a message in one piece.

// WriteFragment sends p as part of a websocket message: one or more
// WS_MESSAGE frames, each within the peer's frame size and the send
// window, waiting for window as needed (up to the write deadline). Every
// frame but the last carries MORE; the last carries it when more is true,
// i.e. the message goes on in a later call. An empty p with more sends
// nothing. text must be the same for every part of one message. It returns
// how many bytes of p were sent, all of them unless err is set.
func (st *Stream) WriteFragment(text, more bool, p []byte) (int, error) {
	if len(p) == 0 && more {
		return 0, nil
	}
	var kind frame.Flags
	if text {
		kind = frame.FlagText
	}
	written := 0
	for first := true; first || len(p) > 0; first = false {
		// A fragment costs its length plus wsFrameCost; one carrying
		// bytes needs room for at least one of them.
		need := int64(wsFrameCost)
		if len(p) > 0 {
			need++
		}
		st.mu.Lock()
		for st.sendWindow < need && st.err == nil && st.writeErr == nil && !st.localFin {
			if err := st.wait(nil, &st.writable, st.writeDeadline); err != nil {
				st.mu.Unlock()
				return written, err
			}
		}
		if err := st.writableLocked(); err != nil {
			st.mu.Unlock()
			return written, err
		}
		n := int(min(int64(len(p)), st.sendWindow-wsFrameCost, int64(st.s.peer.MaxFrameSize)))
		st.sendWindow -= int64(n) + wsFrameCost
		st.mu.Unlock()
		flags := kind
		if more || n < len(p) {
			flags |= frame.FlagMore
		}
		if err := st.s.sendPayload(frame.Header{Type: frame.TypeWSMessage, Flags: flags, StreamID: st.id}, p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// WriteMessage sends one whole websocket message, split into fragments as
// the frame size and send window require.
func (st *Stream) WriteMessage(text bool, p []byte) error {
	_, err := st.WriteFragment(text, false, p)
	return err
}

// ReadFragment reads the next bytes of the websocket message being
// received, at most len(p), as they arrive (fragments are never
// reassembled): n bytes, whether the message is text, and whether more of
// it follows. With more, the next call goes on with the same message;
// without, it starts the next one. An empty p consumes nothing: the call
// returns (0, text, true, nil) once a part of a message can be read, which
// lets a caller wait before it takes a buffer. After the peer closed the
// websocket it returns a *WSCloseError, after any other end io.EOF; a
// message left unfinished by the close is dropped.
func (st *Stream) ReadFragment(p []byte) (n int, text, more bool, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for {
		if st.mode == modeData {
			return 0, false, false, errors.New("mux: ReadFragment on a stream carrying DATA")
		}
		if len(st.frags) > 0 {
			if len(p) == 0 {
				return 0, st.frags[0].flags&frame.FlagText != 0, true, nil
			}
			n, text, more = st.readFragLocked(p)
			return n, text, more, nil
		}
		if err := st.wsEndLocked(); err != nil {
			return 0, false, false, err
		}
		if err := st.wait(nil, &st.readable, st.readDeadline); err != nil {
			return 0, false, false, err
		}
	}
}

// ReadMessage reads one whole websocket message of at most maxSize bytes
// (its fragments reassembled). A longer message resets the stream with
// BODY_TOO_LARGE. After the peer closed the websocket it returns a
// *WSCloseError.
func (st *Stream) ReadMessage(maxSize int) (text bool, msg []byte, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for {
		if len(st.frags) > 0 {
			if f := st.frags[0]; len(msg)+f.n > maxSize {
				st.mu.Unlock()
				st.Reset(frame.CodeBodyTooLarge, "websocket message exceeds limit")
				st.mu.Lock()
				return false, nil, errors.New("mux: websocket message exceeds limit")
			}
			start := len(msg)
			msg = append(msg, make([]byte, st.frags[0].n)...)
			_, text, more := st.readFragLocked(msg[start:])
			if !more {
				if msg == nil {
					msg = []byte{}
				}
				return text, msg, nil
			}
			continue
		}
		if err := st.wsEndLocked(); err != nil {
			return false, nil, err
		}
		if err := st.wait(nil, &st.readable, st.readDeadline); err != nil {
			return false, nil, err
		}
	}
}

// readFragLocked copies the first received fragment's bytes into p (as
// many as fit) and consumes them, returning the window's credit; a
// fragment read to its end also returns its 16-byte charge. more reports
// whether the message goes on (in this fragment or a later one).
func (st *Stream) readFragLocked(p []byte) (n int, text, more bool) {
	f := &st.frags[0]
	n = copy(p, st.buf[st.off:st.off+f.n])
	f.n -= n
	text = f.flags&frame.FlagText != 0
	if f.n > 0 {
		st.consumeLocked(n, n)
		return n, text, true
	}
	more = f.flags&frame.FlagMore != 0
	st.frags = st.frags[1:]
	if len(st.frags) == 0 {
		st.frags = nil // the records' array goes with the message
	}
	st.consumeLocked(n, n+wsFrameCost)
	return n, text, more
}

// wsEndLocked reports why no more messages will arrive, if none are
// buffered and none will: the peer's close, the end of the stream or its
// failure.
func (st *Stream) wsEndLocked() error {
	switch {
	case st.gotWSClose:
		return st.wsCloseErrorLocked()
	case st.remoteFin:
		return io.EOF
	case st.err != nil:
		return st.err
	}
	return nil
}

func (st *Stream) wsCloseErrorLocked() error {
	var c message.WSClose
	if err := c.Unmarshal(st.wsClose); err != nil {
		return err
	}
	return &WSCloseError{Code: c.Code, Reason: string(c.Reason)}
}

// CloseWebSocket sends WS_CLOSE, ending this side of the stream. Sent by
// the accepting side before WriteResponse, it denies the websocket. Sent in
// the middle of a message (after a WriteFragment with more), it drops that
// message.
func (st *Stream) CloseWebSocket(code uint32, reason string) error {
	st.mu.Lock()
	if err := st.writableLocked(); err != nil {
		st.mu.Unlock()
		return err
	}
	st.localFin = true
	st.mu.Unlock()
	c := message.WSClose{Code: code, Reason: []byte(reason)}
	err := st.s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeWSClose, Flags: frame.FlagFin, StreamID: st.id}, enc: &c}, false)
	st.maybeRemove()
	return err
}
