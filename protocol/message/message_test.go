package message

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestRequestHeadRoundTrip(t *testing.T) {
	in := RequestHead{
		Kind: KindWebSocket, HTTPVersion: []byte("1.1"), Method: []byte("GET"), Scheme: []byte("wss"),
		Path: []byte("/a b"), RawPath: []byte("/a%20b"), QueryString: []byte("x=1&y"), RootPath: []byte("/vm/p"),
		Headers:    []HeaderField{{Name: []byte("host"), Value: []byte("p.example")}, {Name: []byte("x-empty"), Value: []byte{}}},
		ClientHost: []byte("::1"), ClientPort: 65535, ServerHost: []byte("10.0.0.1"), ServerPort: 443,
		Subprotocols: [][]byte{[]byte("a"), []byte("b")},
	}
	var out RequestHead
	if err := out.Unmarshal(in.Append(nil)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in %+v\nout %+v", in, out)
	}
	// Reusing the struct keeps no stale headers.
	small := RequestHead{Method: []byte("GET")}
	if err := out.Unmarshal(small.Append(nil)); err != nil || len(out.Headers) != 0 || out.Path != nil {
		t.Fatalf("reuse left stale fields: %+v, %v", out, err)
	}
}

// A worker's HELLO says whether it took the shared body buffer (field 8);
// a HELLO without it (any other side's) encodes as before.
func TestHelloSharedBuffer(t *testing.T) {
	in := Hello{Version: 1, Role: 2, MaxFrameSize: 65536, InitialWindow: 262144, MaxStreams: 1024, Agent: []byte("w"), SharedBuffer: 1}
	var out Hello
	if err := out.Unmarshal(in.Append(nil)); err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	in.SharedBuffer = 0
	without := in.Append(nil)
	if err := out.Unmarshal(without); err != nil || out.SharedBuffer != 0 {
		t.Fatalf("without field 8: %+v, %v", out, err)
	}
	it := NewFields(without)
	var f Field
	for it.Next(&f) {
		if f.Num == 8 {
			t.Fatal("a HELLO without a shared buffer carries field 8")
		}
	}
}

func TestUnknownFieldsAreSkipped(t *testing.T) {
	b := (&ResponseHead{Status: 204}).Append(nil)
	b = AppendVarint(b, 99, 7)
	b = AppendBytes(b, 100, []byte("future"))
	var r ResponseHead
	if err := r.Unmarshal(b); err != nil || r.Status != 204 {
		t.Fatalf("got %+v, %v", r, err)
	}
}

func TestMalformedInputsAreErrors(t *testing.T) {
	cases := map[string]struct {
		msg interface{ Unmarshal([]byte) error }
		in  []byte
	}{
		"truncated key":         {&Hello{}, []byte{0x80}},
		"length beyond input":   {&RequestHead{}, []byte{0x1a, 0x05, 'G'}},
		"wrong wire type":       {&RequestHead{}, []byte{0x18, 0x01}},
		"unsupported wire type": {&Hello{}, []byte{0x0d, 0, 0, 0, 0}},
		"field zero":            {&Hello{}, []byte{0x00, 0x01}},
		"header without value":  {&RequestHead{}, []byte{0x4a, 0x01, 'a'}},
		"port out of range":     {&RequestHead{}, AppendVarint(nil, 11, 70000)},
		"status missing":        {&ResponseHead{}, nil},
		"status out of range":   {&ResponseHead{}, AppendVarint(nil, 1, 42)},
		"value over 32 bits":    {&Reset{}, AppendVarint(nil, 1, 1<<40)},
		"close code too large":  {&WSClose{}, AppendVarint(nil, 1, 6000)},
		"unknown request kind":  {&RequestHead{}, AppendVarint(nil, 1, 9)},
		"bad timeline entry":    {&ConfigResult{}, AppendBytes(nil, 6, []byte{0x80})},
		"varint overflow":       {&Log{}, []byte{0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		"trailer without value": {&End{}, []byte{0x0a, 0x00}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if err := c.msg.Unmarshal(c.in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestWSCloseDefaultsTo1000(t *testing.T) {
	var c WSClose
	if err := c.Unmarshal(nil); err != nil || c.Code != 1000 {
		t.Fatalf("got %+v, %v", c, err)
	}
}

// fuzzRoundTrip decodes arbitrary bytes; whatever decodes must re-encode to
// bytes that decode to the same message.
func fuzzRoundTrip[T any, P interface {
	*T
	Append([]byte) []byte
	Unmarshal([]byte) error
}](f *testing.F, seeds ...P) {
	for _, s := range seeds {
		f.Add(s.Append(nil))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var first T
		if P(&first).Unmarshal(data) != nil {
			return
		}
		enc := P(&first).Append(nil)
		var second T
		if err := P(&second).Unmarshal(enc); err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if again := P(&second).Append(nil); !bytes.Equal(enc, again) {
			t.Fatalf("encoding not stable:\n%x\n%x", enc, again)
		}
	})
}

func FuzzHello(f *testing.F) {
	fuzzRoundTrip(f, &Hello{Version: 1, Role: 1, MaxFrameSize: 65536, Agent: []byte("x")})
}

func FuzzRequestHead(f *testing.F) {
	fuzzRoundTrip(f, &RequestHead{Method: []byte("GET"), Path: []byte("/"), Headers: []HeaderField{{Name: []byte("a"), Value: []byte("b")}}, Subprotocols: [][]byte{[]byte("x")}})
}

func FuzzResponseHead(f *testing.F) {
	fuzzRoundTrip(f, &ResponseHead{Status: 200, Headers: []HeaderField{{Name: []byte("a"), Value: []byte("b")}}})
}

func FuzzEnd(f *testing.F) {
	fuzzRoundTrip(f, &End{Trailers: []HeaderField{{Name: []byte("t"), Value: []byte("v")}}})
}

func FuzzReset(f *testing.F) { fuzzRoundTrip(f, &Reset{Code: 7, Message: []byte("cancel")}) }

func FuzzGoAway(f *testing.F) {
	fuzzRoundTrip(f, &GoAway{LastStreamID: 9, Code: 1, Message: []byte("bye")})
}

func FuzzWSClose(f *testing.F) { fuzzRoundTrip(f, &WSClose{Code: 1001, Reason: []byte("away")}) }

func FuzzLog(f *testing.F) {
	fuzzRoundTrip(f, &Log{Source: []byte("stderr"), Origin: 1, UnixNano: 12345, Line: []byte("boom")})
}

func FuzzConfigResult(f *testing.F) {
	fuzzRoundTrip(f, &ConfigResult{OK: true, Phase: []byte("app"), Timeline: []TimelineEntry{{Phase: []byte("mounts"), BootNano: 5}}})
}

func TestFormatTimeline(t *testing.T) {
	tl := []TimelineEntry{{Phase: []byte("kernel"), BootNano: 812_300_000}, {Phase: []byte("mounts"), BootNano: 815_340_000}, {Phase: []byte("app"), BootNano: 1_450_000_000}}
	if got, want := FormatTimeline(tl), "kernel 812ms, mounts +3ms, app +634.7ms"; got != want {
		t.Fatalf("FormatTimeline = %q, want %q", got, want)
	}
}
