package frame

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func frameBytes(h Header, payload []byte) []byte {
	h.Length = uint32(len(payload))
	return append(AppendHeader(nil, h), payload...)
}

func TestReadFrameRoundTrip(t *testing.T) {
	var stream []byte
	stream = append(stream, frameBytes(Header{Type: TypeRequest, Flags: FlagFin, StreamID: 1}, []byte("head"))...)
	stream = append(stream, frameBytes(Header{Type: TypeData, StreamID: 1}, bytes.Repeat([]byte("x"), 1000))...)
	r := NewReader(bytes.NewReader(stream), DefaultMaxSize)
	h, p, err := r.ReadFrame()
	if err != nil || h.Type != TypeRequest || !h.Has(FlagFin) || h.StreamID != 1 || string(p) != "head" {
		t.Fatalf("first frame %v %q %v", h, p, err)
	}
	h, p, err = r.ReadFrame()
	if err != nil || h.Type != TypeData || len(p) != 1000 {
		t.Fatalf("second frame %v %d %v", h, len(p), err)
	}
	if _, _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("clean end: %v, want io.EOF", err)
	}
}

func TestReaderRejections(t *testing.T) {
	huge := AppendHeader(nil, Header{Type: TypeData, StreamID: 1, Length: 0xffffffff})
	cases := map[string]struct {
		in   []byte
		code uint32
	}{
		"unknown type":          {frameBytes(Header{Type: 0x7f, StreamID: 1}, nil), CodeProtocol},
		"huge declared length":  {huge, CodeFrameSize},
		"stream frame on 0":     {frameBytes(Header{Type: TypeData}, []byte("x")), CodeProtocol},
		"connection frame on 1": {frameBytes(Header{Type: TypePing, StreamID: 1}, make([]byte, 8)), CodeProtocol},
		"bad flags":             {frameBytes(Header{Type: TypeReset, Flags: FlagFin, StreamID: 1}, nil), CodeProtocol},
		"short ping":            {frameBytes(Header{Type: TypePing}, make([]byte, 4)), CodeFrameSize},
		"long window update":    {frameBytes(Header{Type: TypeWindowUpdate, StreamID: 1}, make([]byte, 5)), CodeFrameSize},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := NewReader(bytes.NewReader(c.in), DefaultMaxSize).ReadFrame()
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != c.code {
				t.Fatalf("got %v, want protocol error code %d", err, c.code)
			}
		})
	}
}

func TestTruncatedFrames(t *testing.T) {
	full := frameBytes(Header{Type: TypeData, StreamID: 1}, []byte("hello"))
	for cut := 1; cut < len(full); cut++ {
		_, _, err := NewReader(bytes.NewReader(full[:cut]), DefaultMaxSize).ReadFrame()
		if !errors.Is(err, ErrTruncated) {
			t.Fatalf("cut at %d: %v, want ErrTruncated", cut, err)
		}
	}
}

// FuzzReadFrame feeds arbitrary bytes to the decoder: it must never panic,
// never return a payload above its bound, and agree with the header.
func FuzzReadFrame(f *testing.F) {
	f.Add(frameBytes(Header{Type: TypeData, Flags: FlagFin, StreamID: 1}, []byte("hi")))
	f.Add(frameBytes(Header{Type: TypePing}, make([]byte, 8)))
	f.Add(AppendHeader(nil, Header{Type: TypeData, StreamID: 1, Length: 1 << 30}))
	f.Fuzz(func(t *testing.T, data []byte) {
		const bound = MinMaxSize
		r := NewReader(bytes.NewReader(data), bound)
		for {
			h, p, err := r.ReadFrame()
			if err != nil {
				return
			}
			if len(p) > bound || uint32(len(p)) != h.Length {
				t.Fatalf("payload %d bytes for %v", len(p), h)
			}
			if cap(r.payload) > bound {
				t.Fatalf("reader allocated %d bytes, bound %d", cap(r.payload), bound)
			}
		}
	})
}
