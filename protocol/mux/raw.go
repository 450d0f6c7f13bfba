package mux

// Pass-through twins of Open, ReadResponse and WriteResponse: heads as
// encoded payloads, so that a stream can be carried from one session to
// another without decoding and encoding its heads again.
//
// Transitional: their one user is init carrying host streams to its ASGI
// workers (guest/app/asgi/forward). When the host talks to the workers
// directly, they go away with it.

import (
	"context"

	"github.com/ferry-vm/ferry/protocol/frame"
)

// OpenRaw is Open with the REQUEST payload already encoded, e.g. the head
// of a stream being relayed from another session (see Stream.Head).
func (s *Session) OpenRaw(ctx context.Context, head []byte, body []byte, endStream bool) (*Stream, error) {
	return s.open(ctx, frameSpec{h: frame.Header{Type: frame.TypeRequest}, payload: head}, body, endStream)
}

// ReadResponseRaw is ReadResponse without decoding: it returns the RESPONSE
// payload, valid for the stream's lifetime.
func (st *Stream) ReadResponseRaw(ctx context.Context) ([]byte, error) {
	return st.readResponseHead(ctx)
}

// WriteResponseRaw is WriteResponse with the RESPONSE payload already
// encoded, e.g. one relayed from another session (see ReadResponseRaw).
func (st *Stream) WriteResponseRaw(head []byte, body []byte, endStream bool) error {
	return st.writeResponse(frameSpec{h: frame.Header{Type: frame.TypeResponse, StreamID: st.id}, payload: head}, body, endStream)
}
