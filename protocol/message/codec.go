// Package message encodes and decodes the payloads of Ferry frames: hello,
// request and response heads, trailers, resets, go-away, websocket close,
// log lines and configuration results.
//
// Payloads use a subset of the protobuf wire format (varint and
// length-delimited fields, keys as field<<3|wiretype), so any payload can be
// inspected with `protoc --decode_raw`, and decoders skip fields they do not
// know. Decoders never panic and never allocate beyond the payload they are
// given: byte fields alias the input, so callers copy what they keep beyond
// the lifetime of the payload buffer. See protocol/SPEC.md, "Messages".
package message

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Wire types of the field encoding.
const (
	wireVarint = 0
	wireBytes  = 2
)

// ErrMalformed wraps every decoding failure.
var ErrMalformed = errors.New("malformed message")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// appendKey appends a field key.
func appendKey(b []byte, field, wire int) []byte {
	return binary.AppendUvarint(b, uint64(field)<<3|uint64(wire))
}

// AppendVarint appends a varint field; zero values are omitted.
func AppendVarint(b []byte, field int, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = appendKey(b, field, wireVarint)
	return binary.AppendUvarint(b, v)
}

// AppendBytes appends a length-delimited field; empty values are omitted.
func AppendBytes(b []byte, field int, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	return appendBytesAlways(b, field, v)
}

// AppendString is AppendBytes for a string.
func AppendString(b []byte, field int, v string) []byte {
	if v == "" {
		return b
	}
	b = appendKey(b, field, wireBytes)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// appendBytesAlways appends a length-delimited field even when empty; used
// for repeated fields where position matters (header name/value pairs).
func appendBytesAlways(b []byte, field int, v []byte) []byte {
	b = appendKey(b, field, wireBytes)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// Field is one decoded field. For varint fields Bytes is nil; for
// length-delimited fields Bytes aliases the input.
type Field struct {
	Num    int
	Wire   int
	Varint uint64
	Bytes  []byte
}

// Fields iterates over the fields of an encoded message.
type Fields struct {
	b   []byte
	err error
}

// NewFields returns an iterator over b.
func NewFields(b []byte) Fields { return Fields{b: b} }

// Next decodes the next field. It returns false at the end of the input or
// on error; check Err afterwards.
func (it *Fields) Next(f *Field) bool {
	if it.err != nil || len(it.b) == 0 {
		return false
	}
	key, n := binary.Uvarint(it.b)
	if n <= 0 {
		it.err = malformed("bad field key")
		return false
	}
	it.b = it.b[n:]
	if key>>3 == 0 || key>>3 > math.MaxInt32 {
		it.err = malformed("field number %d out of range", key>>3)
		return false
	}
	f.Num, f.Wire, f.Bytes, f.Varint = int(key>>3), int(key&7), nil, 0
	switch f.Wire {
	case wireVarint:
		v, n := binary.Uvarint(it.b)
		if n <= 0 {
			it.err = malformed("bad varint in field %d", f.Num)
			return false
		}
		f.Varint, it.b = v, it.b[n:]
	case wireBytes:
		l, n := binary.Uvarint(it.b)
		if n <= 0 || l > uint64(len(it.b)-n) {
			it.err = malformed("bad length in field %d", f.Num)
			return false
		}
		f.Bytes, it.b = it.b[n:n+int(l):n+int(l)], it.b[n+int(l):]
	default:
		it.err = malformed("unsupported wire type %d in field %d", f.Wire, f.Num)
		return false
	}
	return true
}

// Err returns the first decoding error, if any.
func (it *Fields) Err() error { return it.err }

// wantWire checks that a known field has the expected wire type.
func wantWire(f *Field, wire int) error {
	if f.Wire != wire {
		return malformed("field %d has wire type %d, want %d", f.Num, f.Wire, wire)
	}
	return nil
}

// varint32 checks that a varint fits the 32 bits a field allows.
func varint32(f *Field) (uint32, error) {
	if err := wantWire(f, wireVarint); err != nil {
		return 0, err
	}
	if f.Varint > math.MaxUint32 {
		return 0, malformed("field %d value %d exceeds 32 bits", f.Num, f.Varint)
	}
	return uint32(f.Varint), nil
}

func bytesField(f *Field) ([]byte, error) {
	if err := wantWire(f, wireBytes); err != nil {
		return nil, err
	}
	return f.Bytes, nil
}
