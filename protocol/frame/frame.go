// Package frame owns the lowest layer of the Ferry wire protocol: the fixed
// 10-byte frame header, the frame types and flags, and a decoder that never
// allocates more than a negotiated bound whatever a length field says.
//
// The layout is specified in protocol/SPEC.md, section "Frames". This package
// knows nothing about streams or message payloads; see packages message and mux.
package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the size in bytes of every frame header.
const HeaderSize = 10

// Frame size bounds. Every peer must accept frames up to MinMaxSize; a peer
// may announce a larger limit in its HELLO, up to MaxMaxSize.
const (
	MinMaxSize     = 16 << 10 // 16 KiB
	DefaultMaxSize = 64 << 10 // 64 KiB
	MaxMaxSize     = 16 << 20 // 16 MiB
)

// Type identifies what a frame carries.
type Type uint8

// Connection-level frame types travel on stream 0.
const (
	TypeHello        Type = 0x01
	TypePing         Type = 0x02
	TypeGoAway       Type = 0x03
	TypeConfig       Type = 0x04
	TypeConfigResult Type = 0x05
	TypeLog          Type = 0x06
)

// Stream frame types travel on a non-zero stream id.
const (
	TypeRequest      Type = 0x10
	TypeResponse     Type = 0x11
	TypeData         Type = 0x12
	TypeEnd          Type = 0x13
	TypeReset        Type = 0x14
	TypeWindowUpdate Type = 0x15
	TypeWSMessage    Type = 0x16
	TypeWSClose      Type = 0x17
	TypeDataShared   Type = 0x18
)

var typeNames = map[Type]string{
	TypeHello: "HELLO", TypePing: "PING", TypeGoAway: "GOAWAY", TypeConfig: "CONFIG",
	TypeConfigResult: "CONFIG_RESULT", TypeLog: "LOG", TypeRequest: "REQUEST",
	TypeResponse: "RESPONSE", TypeData: "DATA", TypeEnd: "END", TypeReset: "RESET",
	TypeWindowUpdate: "WINDOW_UPDATE", TypeWSMessage: "WS_MESSAGE", TypeWSClose: "WS_CLOSE", TypeDataShared: "DATA_SHARED",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("UNKNOWN(0x%02x)", uint8(t))
}

// Known reports whether t is a frame type defined by this protocol version.
func (t Type) Known() bool {
	_, ok := typeNames[t]
	return ok
}

// ConnectionLevel reports whether frames of type t belong on stream 0.
func (t Type) ConnectionLevel() bool { return t < 0x10 }

// Flags modify a frame. Which flags are valid depends on the type.
type Flags uint8

const (
	// FlagFin marks the last frame the sender sends on a stream (half-close).
	FlagFin Flags = 0x01
	// FlagCompressed marks a DATA or WS_MESSAGE payload compressed with a
	// negotiated algorithm; the payload's first byte names the algorithm.
	FlagCompressed Flags = 0x02
	// FlagAck marks a PING that answers another PING.
	FlagAck Flags = 0x04
	// FlagText marks a WS_MESSAGE that starts a text (not binary) message.
	FlagText Flags = 0x08
	// FlagMore marks a WS_MESSAGE fragment that is followed by more
	// fragments of the same message.
	FlagMore Flags = 0x10
)

// validFlags lists the flags each frame type may carry.
var validFlags = map[Type]Flags{
	TypeHello: 0, TypePing: FlagAck, TypeGoAway: 0, TypeConfig: 0, TypeConfigResult: 0, TypeLog: 0,
	TypeRequest: FlagFin, TypeResponse: FlagFin, TypeData: FlagFin | FlagCompressed,
	TypeEnd: FlagFin, TypeReset: 0, TypeWindowUpdate: 0,
	TypeWSMessage: FlagText | FlagMore | FlagCompressed, TypeWSClose: FlagFin, TypeDataShared: FlagFin,
}

// Header is a decoded frame header.
type Header struct {
	Type     Type
	Flags    Flags
	StreamID uint32
	Length   uint32
}

// Has reports whether all flags in f are set.
func (h Header) Has(f Flags) bool { return h.Flags&f == f }

func (h Header) String() string {
	return fmt.Sprintf("%s stream=%d flags=0x%02x len=%d", h.Type, h.StreamID, uint8(h.Flags), h.Length)
}

// AppendHeader appends the 10-byte encoding of h to b.
func AppendHeader(b []byte, h Header) []byte {
	b = append(b, byte(h.Type), byte(h.Flags))
	b = binary.BigEndian.AppendUint32(b, h.StreamID)
	return binary.BigEndian.AppendUint32(b, h.Length)
}

// ParseHeader decodes a header from the first HeaderSize bytes of b.
func ParseHeader(b []byte) Header {
	_ = b[HeaderSize-1]
	return Header{
		Type:     Type(b[0]),
		Flags:    Flags(b[1]),
		StreamID: binary.BigEndian.Uint32(b[2:6]),
		Length:   binary.BigEndian.Uint32(b[6:10]),
	}
}

// Error is a connection-level protocol violation detected while decoding.
// The session answers it with a GOAWAY carrying Code and the message.
type Error struct {
	Code   uint32
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("protocol error (code %d): %s", e.Code, e.Reason) }

// Errorf builds an *Error with the given code.
func Errorf(code uint32, format string, args ...any) *Error {
	return &Error{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// Validate checks a header against the structural rules that do not depend
// on stream state: known type, allowed flags, the right kind of stream id,
// a length within maxSize and fixed lengths where the type has one.
func (h Header) Validate(maxSize uint32) error {
	if !h.Type.Known() {
		return Errorf(CodeProtocol, "unknown frame type 0x%02x", uint8(h.Type))
	}
	if h.Length > maxSize {
		return Errorf(CodeFrameSize, "%s frame of %d bytes exceeds maximum %d", h.Type, h.Length, maxSize)
	}
	if extra := h.Flags &^ validFlags[h.Type]; extra != 0 {
		return Errorf(CodeProtocol, "%s frame with invalid flags 0x%02x", h.Type, uint8(extra))
	}
	if h.Type.ConnectionLevel() != (h.StreamID == 0) {
		if h.StreamID == 0 {
			return Errorf(CodeProtocol, "%s frame on stream 0", h.Type)
		}
		return Errorf(CodeProtocol, "%s frame on stream %d, must be stream 0", h.Type, h.StreamID)
	}
	switch h.Type {
	case TypePing:
		if h.Length != 8 {
			return Errorf(CodeFrameSize, "PING payload must be 8 bytes, got %d", h.Length)
		}
	case TypeWindowUpdate:
		if h.Length != 4 {
			return Errorf(CodeFrameSize, "WINDOW_UPDATE payload must be 4 bytes, got %d", h.Length)
		}
	}
	return nil
}

// Error and reset codes, shared by RESET and GOAWAY frames.
const (
	CodeNoError         uint32 = 0
	CodeProtocol        uint32 = 1
	CodeInternal        uint32 = 2
	CodeFlowControl     uint32 = 3
	CodeStreamClosed    uint32 = 4
	CodeFrameSize       uint32 = 5
	CodeRefusedStream   uint32 = 6
	CodeCancel          uint32 = 7
	CodeTimeout         uint32 = 8
	CodeVersion         uint32 = 9
	CodeCompression     uint32 = 10
	CodeWorkerLost      uint32 = 11
	CodeAppError        uint32 = 12
	CodeUnavailable     uint32 = 13
	CodeBodyTooLarge    uint32 = 14
	CodeKeepaliveLost   uint32 = 15
	CodeEnhanceYourCalm uint32 = 16
)

var codeNames = map[uint32]string{
	CodeNoError: "NO_ERROR", CodeProtocol: "PROTOCOL_ERROR", CodeInternal: "INTERNAL_ERROR",
	CodeFlowControl: "FLOW_CONTROL_ERROR", CodeStreamClosed: "STREAM_CLOSED",
	CodeFrameSize: "FRAME_SIZE_ERROR", CodeRefusedStream: "REFUSED_STREAM", CodeCancel: "CANCEL",
	CodeTimeout: "TIMEOUT", CodeVersion: "VERSION_MISMATCH", CodeCompression: "COMPRESSION_ERROR",
	CodeWorkerLost: "WORKER_LOST", CodeAppError: "APP_ERROR", CodeUnavailable: "UNAVAILABLE",
	CodeBodyTooLarge: "BODY_TOO_LARGE", CodeKeepaliveLost: "KEEPALIVE_TIMEOUT",
	CodeEnhanceYourCalm: "ENHANCE_YOUR_CALM",
}

// CodeName returns the symbolic name of an error code.
func CodeName(code uint32) string {
	if n, ok := codeNames[code]; ok {
		return n
	}
	return fmt.Sprintf("CODE_%d", code)
}

// Reader decodes frames from a byte stream. The payload slice it returns is
// only valid until the next call; callers copy what they keep. It never
// allocates more than the maximum frame size it was given.
type Reader struct {
	r       io.Reader
	max     uint32
	hdr     [HeaderSize]byte
	payload []byte
}

// NewReader returns a Reader that rejects frames longer than maxSize.
func NewReader(r io.Reader, maxSize uint32) *Reader {
	return &Reader{r: r, max: maxSize}
}

// SetMaxSize changes the bound on payload length (after negotiation).
func (fr *Reader) SetMaxSize(n uint32) { fr.max = n }

// ErrTruncated reports a stream that ended in the middle of a frame.
var ErrTruncated = errors.New("frame: stream ended inside a frame")

// ReadFrame reads and validates one frame. It returns io.EOF only when the
// stream ends cleanly between frames, and an *Error for protocol violations.
func (fr *Reader) ReadFrame() (Header, []byte, error) {
	h, err := fr.ReadHeader()
	if err != nil {
		return h, nil, err
	}
	p, err := fr.ReadPayload(h)
	return h, p, err
}

// ReadHeader reads and validates the header of the next frame; its payload
// (h.Length bytes) must be read next, with ReadPayload (into the Reader's
// own buffer) or ReadPayloadInto (where the caller keeps it). ReadFrame is
// ReadHeader and ReadPayload in one.
func (fr *Reader) ReadHeader() (Header, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = ErrTruncated
		}
		return Header{}, err
	}
	h := ParseHeader(fr.hdr[:])
	if err := h.Validate(fr.max); err != nil {
		return h, err
	}
	return h, nil
}

// ReadPayload reads the payload of the frame whose header h was just read,
// into the Reader's buffer: valid until the next call.
func (fr *Reader) ReadPayload(h Header) ([]byte, error) {
	if uint32(cap(fr.payload)) < h.Length {
		fr.payload = make([]byte, h.Length, max(h.Length, MinMaxSize))
	}
	p := fr.payload[:h.Length]
	if err := fr.ReadPayloadInto(p); err != nil {
		return nil, err
	}
	return p, nil
}

// ReadPayloadInto reads the payload of the frame whose header was just
// read into p, which is exactly its length.
func (fr *Reader) ReadPayloadInto(p []byte) error {
	if _, err := io.ReadFull(fr.r, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = ErrTruncated
		}
		return err
	}
	return nil
}
