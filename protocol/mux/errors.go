package mux

import (
	"errors"
	"fmt"

	"github.com/ferry-vm/ferry/protocol/frame"
)

var (
	// ErrSessionClosed is returned by operations on a closed session.
	ErrSessionClosed = errors.New("mux: session closed")
	// ErrGoAway is returned by Open after the peer sent GOAWAY.
	ErrGoAway = errors.New("mux: peer is going away, no new streams")
	// ErrKeepaliveTimeout closes a session whose peer stopped answering.
	ErrKeepaliveTimeout = errors.New("mux: keepalive timeout, peer unresponsive")
	// ErrStreamIDsExhausted is returned by Open when no stream id is left.
	ErrStreamIDsExhausted = errors.New("mux: stream ids exhausted, open a new session")
	// ErrWriteClosed is returned by writes after the local side finished.
	ErrWriteClosed = errors.New("mux: write after end of stream")
	// ErrHeadTooLarge is returned (wrapped, with the sizes) by Open,
	// WriteResponse and CloseWriteTrailers when the encoded head or
	// trailers exceed the peer's maximum frame size. Nothing was sent: the
	// session goes on, and the stream can still be answered or reset (an
	// opened stream was never opened).
	ErrHeadTooLarge = errors.New("mux: head exceeds the peer's maximum frame size")
	// ErrTimeout is returned when a stream deadline passes.
	ErrTimeout = timeoutError{}

	errPeerNotReading = errors.New("mux: peer is not reading, control queue overflow")
)

// headTooLarge reports a head of n bytes refused against limit.
func headTooLarge(t frame.Type, n int, limit uint32) error {
	return fmt.Errorf("%w: %s of %d bytes, the peer accepts %d", ErrHeadTooLarge, t, n, limit)
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "mux: i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// StreamError reports a stream that was reset, by the peer (Remote) or
// locally. Code is one of the frame.Code constants.
type StreamError struct {
	StreamID uint32
	Code     uint32
	Message  string
	Remote   bool
}

func (e *StreamError) Error() string {
	who := "locally"
	if e.Remote {
		who = "by peer"
	}
	if e.Message == "" {
		return fmt.Sprintf("mux: stream %d reset %s: %s", e.StreamID, who, frame.CodeName(e.Code))
	}
	return fmt.Sprintf("mux: stream %d reset %s: %s: %s", e.StreamID, who, frame.CodeName(e.Code), e.Message)
}

// ProtocolError closes a session after the peer broke the protocol, or
// reports the reason the peer gave in its GOAWAY (Remote).
type ProtocolError struct {
	Code   uint32
	Reason string
	Remote bool
}

func (e *ProtocolError) Error() string {
	if e.Remote {
		return fmt.Sprintf("mux: peer closed the session: %s: %s", frame.CodeName(e.Code), e.Reason)
	}
	return fmt.Sprintf("mux: protocol error: %s: %s", frame.CodeName(e.Code), e.Reason)
}

// WSCloseError is returned by ReadMessage and ReadResponse after the peer
// closed the websocket (or denied it before accepting).
type WSCloseError struct {
	Code   uint32
	Reason string
}

func (e *WSCloseError) Error() string {
	return fmt.Sprintf("mux: websocket closed with code %d %q", e.Code, e.Reason)
}
