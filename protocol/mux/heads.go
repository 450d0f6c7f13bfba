package mux

// A stream's HTTP heads and trailers: the REQUEST head an accepted stream
// arrived with, the RESPONSE head (read by the side that opened the
// stream, written by the other, together with the first body bytes), and
// the END frame's trailers.

import (
	"context"
	"errors"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

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
	raw, err := st.readResponseHead(ctx)
	if err != nil {
		return err
	}
	return h.Unmarshal(raw)
}

// readResponseHead waits for the RESPONSE payload of a stream this side
// opened; it stays valid for the stream's lifetime.
func (st *Stream) readResponseHead(ctx context.Context) ([]byte, error) {
	if !st.local {
		return nil, errors.New("mux: ReadResponse on a stream the peer opened")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for !st.headReceived || st.headHeld {
		switch {
		case st.headReceived:
			// Applied, but the frames read with it are not yet: wait for
			// wakeLateHeads, which the read loop runs before it reads again
			// or ends.
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
