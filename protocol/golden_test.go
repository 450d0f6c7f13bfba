package protocol

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode"

	"github.com/klauspost/compress/s2"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the table in this file")

const vectorsPath = "testdata/vectors.json"

// decoder is what every message type implements.
type decoder interface {
	Append([]byte) []byte
	Unmarshal([]byte) error
}

// vector is one entry of the table: a frame header and either a message or
// a raw payload.
type vector struct {
	name    string
	meaning string
	h       frame.Header
	msg     decoder // nil for raw payloads
	raw     []byte
}

func hf(pairs ...string) []message.HeaderField {
	var hs []message.HeaderField
	for i := 0; i < len(pairs); i += 2 {
		hs = append(hs, message.HeaderField{Name: []byte(pairs[i]), Value: []byte(pairs[i+1])})
	}
	return hs
}

func b(s string) []byte { return []byte(s) }

func table() []vector {
	return []vector{
		{name: "hello-client", meaning: "host side opens the connection: version 1, client role, 64 KiB frames, 256 KiB window, 1024 streams, accepts s2 and zstd",
			h: frame.Header{Type: frame.TypeHello}, msg: &message.Hello{Version: 1, Role: message.RoleClient, MaxFrameSize: 65536, InitialWindow: 262144, MaxStreams: 1024, Compression: 3, Agent: b("ferry-host/1")}},
		{name: "hello-server", meaning: "guest side: server role, 16 KiB frames, 64 KiB window, 100 streams, no compression",
			h: frame.Header{Type: frame.TypeHello}, msg: &message.Hello{Version: 1, Role: message.RoleServer, MaxFrameSize: 16384, InitialWindow: 65536, MaxStreams: 100, Agent: b("ferry-init/1")}},
		{name: "ping", meaning: "keepalive ping with opaque data 1",
			h: frame.Header{Type: frame.TypePing}, raw: []byte{0, 0, 0, 0, 0, 0, 0, 1}},
		{name: "ping-ack", meaning: "answer to ping 1",
			h: frame.Header{Type: frame.TypePing, Flags: frame.FlagAck}, raw: []byte{0, 0, 0, 0, 0, 0, 0, 1}},
		{name: "goaway", meaning: "graceful drain: streams up to 7 are processed",
			h: frame.Header{Type: frame.TypeGoAway}, msg: &message.GoAway{LastStreamID: 7, Code: frame.CodeNoError, Message: b("shutting down")}},
		{name: "config", meaning: "configuration (JSON document, see SPEC section Configuration)",
			h: frame.Header{Type: frame.TypeConfig}, raw: b(`{"program_id":"hello","interface":"asgi","entrypoint":"main:app"}`)},
		{name: "config-result-ok", meaning: "configuration applied; boot timeline in CLOCK_BOOTTIME nanoseconds",
			h: frame.Header{Type: frame.TypeConfigResult}, msg: &message.ConfigResult{OK: true, Timeline: []message.TimelineEntry{{Phase: b("mounts"), BootNano: 812000000}, {Phase: b("app"), BootNano: 1450000000}}}},
		{name: "config-result-error", meaning: "configuration refused: structured error naming phase and field",
			h: frame.Header{Type: frame.TypeConfigResult}, msg: &message.ConfigResult{Phase: b("network"), Field: b("network.ipv4.address"), Message: b("invalid prefix length 33"), Detail: b("10.0.0.2/33")}},
		{name: "log", meaning: "stdout line of worker 2 at a wall-clock time",
			h: frame.Header{Type: frame.TypeLog}, msg: &message.Log{Source: b("stdout"), Origin: 2, UnixNano: 1767225600000000000, Line: b("hello from the app")}},
		{name: "request-get", meaning: "GET /items/caf%C3%A9?q=1 without body (FIN on the head) on stream 1",
			h: frame.Header{Type: frame.TypeRequest, Flags: frame.FlagFin, StreamID: 1}, msg: &message.RequestHead{
				HTTPVersion: b("1.1"), Method: b("GET"), Scheme: b("http"), Path: b("/items/café"), RawPath: b("/items/caf%C3%A9"),
				QueryString: b("q=1"), RootPath: b("/vm/hello"), Headers: hf("host", "hello.example", "accept", "*/*"),
				ClientHost: b("203.0.113.9"), ClientPort: 52044, ServerHost: b("127.0.0.1"), ServerPort: 8080}},
		{name: "request-websocket", meaning: "websocket open on stream 3 offering two subprotocols",
			h: frame.Header{Type: frame.TypeRequest, StreamID: 3}, msg: &message.RequestHead{
				Kind: message.KindWebSocket, HTTPVersion: b("1.1"), Scheme: b("ws"), Path: b("/ws"), RawPath: b("/ws"),
				Headers: hf("host", "hello.example", "sec-websocket-protocol", "chat, superchat"), Subprotocols: [][]byte{b("chat"), b("superchat")}}},
		{name: "request-empty-header-value", meaning: "a header with an empty value is still encoded (both occurrences present)",
			h: frame.Header{Type: frame.TypeRequest, StreamID: 5}, msg: &message.RequestHead{Method: b("POST"), Path: b("/"), Headers: hf("x-empty", "")}},
		{name: "response-200", meaning: "200 with two headers, body follows",
			h: frame.Header{Type: frame.TypeResponse, StreamID: 1}, msg: &message.ResponseHead{Status: 200, Headers: hf("content-type", "application/json", "content-length", "17")}},
		{name: "response-101", meaning: "websocket accepted with subprotocol chat",
			h: frame.Header{Type: frame.TypeResponse, StreamID: 3}, msg: &message.ResponseHead{Status: 101, Subprotocol: b("chat")}},
		{name: "data-fin", meaning: "last body bytes on stream 1",
			h: frame.Header{Type: frame.TypeData, Flags: frame.FlagFin, StreamID: 1}, raw: b(`{"message":"hi"}` + "\n")},
		{name: "data-s2", meaning: "s2-compressed body: algorithm byte 1, then s2 block of 64 'a'",
			h: frame.Header{Type: frame.TypeData, Flags: frame.FlagCompressed, StreamID: 1}, raw: append([]byte{message.CompressS2}, s2.Encode(nil, bytes.Repeat(b("a"), 64))...)},
		{name: "end-trailers", meaning: "end of stream 1 with one trailer",
			h: frame.Header{Type: frame.TypeEnd, Flags: frame.FlagFin, StreamID: 1}, msg: &message.End{Trailers: hf("grpc-status", "0")}},
		{name: "end-empty", meaning: "end of stream 1 without trailers (empty payload)",
			h: frame.Header{Type: frame.TypeEnd, Flags: frame.FlagFin, StreamID: 1}, msg: &message.End{}},
		{name: "reset", meaning: "stream 5 abandoned: worker lost",
			h: frame.Header{Type: frame.TypeReset, StreamID: 5}, msg: &message.Reset{Code: frame.CodeWorkerLost, Message: b("worker 1 exited with status 1")}},
		{name: "window-update", meaning: "stream 1 may send 131072 more bytes",
			h: frame.Header{Type: frame.TypeWindowUpdate, StreamID: 1}, raw: []byte{0, 2, 0, 0}},
		{name: "ws-text", meaning: "complete text message on stream 3",
			h: frame.Header{Type: frame.TypeWSMessage, Flags: frame.FlagText, StreamID: 3}, raw: b("héllo")},
		{name: "ws-binary-fragment", meaning: "first fragment of a binary message, more follow",
			h: frame.Header{Type: frame.TypeWSMessage, Flags: frame.FlagMore, StreamID: 3}, raw: []byte{0, 1, 2, 255}},
		{name: "ws-close", meaning: "websocket closed with code 4001 and a reason",
			h: frame.Header{Type: frame.TypeWSClose, Flags: frame.FlagFin, StreamID: 3}, msg: &message.WSClose{Code: 4001, Reason: b("bye")}},
	}
}

// fileVector is the JSON form of a vector.
type fileVector struct {
	Name    string         `json:"name"`
	Meaning string         `json:"meaning"`
	Type    string         `json:"type"`
	Flags   []string       `json:"flags"`
	Stream  uint32         `json:"stream"`
	Message map[string]any `json:"message,omitempty"`
	Payload string         `json:"payload_hex,omitempty"`
	Hex     string         `json:"hex"`
}

type file struct {
	About   string       `json:"about"`
	Vectors []fileVector `json:"vectors"`
}

func flagNames(f frame.Flags) []string {
	names := []string{}
	for _, x := range []struct {
		f frame.Flags
		n string
	}{{frame.FlagFin, "FIN"}, {frame.FlagCompressed, "COMPRESSED"}, {frame.FlagAck, "ACK"}, {frame.FlagText, "TEXT"}, {frame.FlagMore, "MORE"}} {
		if f&x.f != 0 {
			names = append(names, x.n)
		}
	}
	return names
}

// snake turns a Go field name into the snake_case name used in SPEC.md.
func snake(s string) string {
	if s == "OK" {
		return "ok"
	}
	s = strings.NewReplacer("HTTP", "Http", "ID", "Id").Replace(s)
	var out []rune
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				out = append(out, '_')
			}
			r = unicode.ToLower(r)
		}
		out = append(out, r)
	}
	return string(out)
}

// view renders a message as the JSON-friendly map used in the vectors file:
// byte strings as strings, headers as [name, value] pairs, zero values left out.
func view(v any) map[string]any {
	m := map[string]any{}
	rv := reflect.ValueOf(v).Elem()
	for i := 0; i < rv.NumField(); i++ {
		f, name := rv.Field(i), snake(rv.Type().Field(i).Name)
		if f.IsZero() || (f.Kind() == reflect.Slice && f.Len() == 0) {
			continue
		}
		switch x := f.Interface().(type) {
		case []byte:
			m[name] = string(x)
		case [][]byte:
			var ss []any
			for _, p := range x {
				ss = append(ss, string(p))
			}
			m[name] = ss
		case []message.HeaderField:
			var ps []any
			for _, h := range x {
				ps = append(ps, []any{string(h.Name), string(h.Value)})
			}
			m[name] = ps
		case []message.TimelineEntry:
			var es []any
			for _, e := range x {
				es = append(es, view(&e))
			}
			m[name] = es
		default:
			m[name] = x
		}
	}
	return m
}

// normalize round-trips through JSON so numbers compare as the file has them.
func normalize(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	if out == nil {
		out = map[string]any{}
	}
	return out
}

func encode(v vector) []byte {
	payload := v.raw
	if v.msg != nil {
		payload = v.msg.Append(nil)
	}
	h := v.h
	h.Length = uint32(len(payload))
	return append(frame.AppendHeader(nil, h), payload...)
}

func TestGoldenVectors(t *testing.T) {
	vectors := table()
	if *update {
		f := file{About: "Ferry protocol golden vectors: each hex is one complete frame (10-byte header + payload). 'message' is the decoded payload (byte strings as UTF-8 strings, headers as [name, value] pairs, zero fields omitted); 'payload_hex' is given instead for raw payloads. See SPEC.md."}
		for _, v := range vectors {
			fv := fileVector{Name: v.name, Meaning: v.meaning, Type: v.h.Type.String(), Flags: flagNames(v.h.Flags), Stream: v.h.StreamID, Hex: hex.EncodeToString(encode(v))}
			if v.msg != nil {
				fv.Message = view(v.msg)
			} else {
				fv.Payload = hex.EncodeToString(v.raw)
			}
			f.Vectors = append(f.Vectors, fv)
		}
		out, _ := json.MarshalIndent(f, "", "  ")
		if err := os.WriteFile(vectorsPath, append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("read vectors (run with -update to create): %v", err)
	}
	var f file
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) != len(vectors) {
		t.Fatalf("file has %d vectors, table %d", len(f.Vectors), len(vectors))
	}
	for i, v := range vectors {
		fv := f.Vectors[i]
		t.Run(v.name, func(t *testing.T) {
			wire, err := hex.DecodeString(fv.Hex)
			if err != nil {
				t.Fatal(err)
			}
			// Encoding the table entry reproduces the file's bytes exactly.
			if got := encode(v); !bytes.Equal(got, wire) {
				t.Fatalf("encoding changed:\n got %x\nwant %x", got, wire)
			}
			// Decoding the file's bytes gives back the header and message.
			fr := frame.NewReader(bytes.NewReader(wire), frame.MaxMaxSize)
			h, payload, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("read frame: %v", err)
			}
			if h.Type.String() != fv.Type || !reflect.DeepEqual(flagNames(h.Flags), fv.Flags) || h.StreamID != fv.Stream {
				t.Fatalf("header %v does not match %s %v stream %d", h, fv.Type, fv.Flags, fv.Stream)
			}
			if v.msg == nil {
				if hex.EncodeToString(payload) != fv.Payload {
					t.Fatalf("payload %x, want %s", payload, fv.Payload)
				}
				return
			}
			got := reflect.New(reflect.TypeOf(v.msg).Elem()).Interface().(decoder)
			if err := got.Unmarshal(payload); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if want := normalize(t, fv.Message); !reflect.DeepEqual(normalize(t, view(got)), want) {
				t.Fatalf("decoded %v\nwant %v", view(got), want)
			}
		})
	}
}

// TestSpecExample checks the worked example printed in SPEC.md byte by byte.
func TestSpecExample(t *testing.T) {
	h := frame.Header{Type: frame.TypeData, Flags: frame.FlagFin, StreamID: 1, Length: 5}
	got := append(frame.AppendHeader(nil, h), "hello"...)
	want, _ := hex.DecodeString("12010000000100000005" + "68656c6c6f")
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x want %x", got, want)
	}
	req := message.RequestHead{Method: b("GET"), Path: b("/")}
	wantReq, _ := hex.DecodeString("1a03474554" + "2a012f")
	if got := req.Append(nil); !bytes.Equal(got, wantReq) {
		t.Fatalf("request head %x want %x", got, wantReq)
	}
}
