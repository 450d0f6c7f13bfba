package alephcompat

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// hostileServer is a server whose program is never reached: the
// documents sent to it are refused before that.
func hostileServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(Options{
		Configure: func(context.Context, []byte) *contract.ConfigError { return nil },
		Serve:     func(_ context.Context, st *mux.Stream) { st.Reset(0, "") },
		Halt:      func() error { return nil },
		Shutdown:  func(string) {},
		Scratch:   t.TempDir(),
		DataDir:   t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// exchangeRaw sends in on a connection served by s, closes the sending
// side and returns what s answered.
func exchangeRaw(t *testing.T, s *Server, in []byte) []byte {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeConn(context.Background(), b)
	}()
	got := make(chan []byte, 1)
	go func() {
		out, _ := io.ReadAll(a)
		got <- out
	}()
	go func() {
		a.Write(in)
		// net.Pipe has no half close: the answer comes before EOF, or
		// the server is waiting for more and is told by the close.
	}()
	select {
	case out := <-got:
		<-done
		return out
	case <-time.After(60 * time.Second):
		a.Close()
		t.Fatal("no answer to a hostile document")
		return nil
	}
}

// errorDoc decodes an answer as the error document of a refused request.
func errorDoc(t *testing.T, out []byte) string {
	t.Helper()
	var e runError
	if err := msgpack.Unmarshal(out, &e); err != nil || e.Error == "" {
		t.Fatalf("answer %q is not an error document (%v)", out, err)
	}
	return e.Error
}

func TestRunRequestHugeDeclaredArrayIsRefused(t *testing.T) {
	s := hostileServer(t)
	// {"scope": {"headers": array of 2^32-1 elements}}, and nothing more.
	in := []byte("\x81\xa5scope\x81\xa7headers\xdd\xff\xff\xff\xff")
	t.Log(errorDoc(t, exchangeRaw(t, s, in)))
}

func TestRunRequestDeepNestingIsRefused(t *testing.T) {
	s := hostileServer(t)
	// {"scope": {"x": [[[[...nil...]]]]}}, ten million levels deep.
	var in bytes.Buffer
	in.WriteString("\x81\xa5scope\x81\xa1x")
	in.Write(bytes.Repeat([]byte{0x91}, 10_000_000))
	in.WriteByte(0xc0)
	t.Log(errorDoc(t, exchangeRaw(t, s, in.Bytes())))
}

func TestConfigurationHugeDeclaredArrayIsRefused(t *testing.T) {
	s := hostileServer(t)
	doc := []byte("\x81\xa7volumes\xdd\xff\xff\xff\xff")
	in := append([]byte(strconv.Itoa(len(doc))+"\n"), doc...)
	var r configReply
	if err := msgpack.Unmarshal(exchangeRaw(t, s, in), &r); err != nil || r.Success {
		t.Fatalf("reply %+v (%v)", r, err)
	}
	t.Log(r.Error)
}

func TestReadDoc(t *testing.T) {
	good, err := msgpack.Marshal(map[string]any{
		"scope": map[string]any{"type": "http", "headers": [][][]byte{{[]byte("a"), []byte("b")}}, "body": bytes.Repeat([]byte("x"), 70000)},
		"n":     []any{int8(-3), uint16(300), uint32(1 << 20), int64(-1 << 40), 1.5, float32(2.5), nil, true, false, "", bytes.Repeat([]byte("s"), 300)},
		"ext":   msgpack.RawMessage("\xd4\x01\x02"),
		"e8":    msgpack.RawMessage("\xc7\x03\x05abc"),
	})
	if err != nil {
		t.Fatal(err)
	}
	deep := append(bytes.Repeat([]byte{0x91}, maxDepth+1), 0xc0)
	for _, c := range []struct {
		name  string
		in    []byte
		limit int
		err   string
	}{
		{"every kind of value", good, len(good), ""},
		{"nested to the limit", deep[1:], 100, ""},
		{"nested past the limit", deep, 100, "nested more than"},
		{"longer than the limit", good, len(good) - 1, "longer than"},
		{"declared length past the limit", []byte("\xc6\x10\x00\x00\x00"), 1000, "exceeds"},
		{"too many entries", []byte("\xdd\x00\x02\x00\x00"), 1 << 20, "entries"},
		{"unused code", []byte("\x91\xc1"), 10, "begins no value"},
		{"cut short", []byte("\x92\xc0"), 10, "cut short"},
		{"empty", nil, 10, "cut short"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := bufio.NewReader(io.MultiReader(bytes.NewReader(c.in), strings.NewReader("after")))
			if c.err != "" {
				r = bufio.NewReader(bytes.NewReader(c.in))
			}
			doc, err := readDoc(r, c.limit)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one saying %q", err, c.err)
				}
				return
			}
			if err != nil || !bytes.Equal(doc, c.in) {
				t.Fatalf("%v; read %d bytes of %d", err, len(doc), len(c.in))
			}
			if rest, _ := io.ReadAll(r); string(rest) != "after" {
				t.Fatalf("read past the document: %q left", rest)
			}
		})
	}
}

func TestConfigurationMemoryFollowsTheBytesSent(t *testing.T) {
	s := hostileServer(t)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	// The longest length line, then ten bytes and the end.
	out := exchangeRaw(t, s, []byte("99999999\n\x81\xa7volumes\x90"))
	runtime.ReadMemStats(&after)
	var r configReply
	if err := msgpack.Unmarshal(out, &r); err != nil || r.Success {
		t.Fatalf("reply %+v (%v)", r, err)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 10<<20 {
		t.Fatalf("%d bytes allocated for a 10-byte configuration", grown)
	}
}

// FuzzDocuments feeds arbitrary bytes to the decoding of both documents
// the supervisor sends: an error is fine, a panic or a hang is not.
func FuzzDocuments(f *testing.F) {
	run, _ := msgpack.Marshal(&runRequest{Scope: scope{Type: "http", Path: "/", Headers: [][][]byte{{[]byte("a"), []byte("b")}}, Body: []byte("x")}})
	cfg, _ := msgpack.Marshal(&configDoc{VMHash: "ab", Encoding: "plain", Code: []byte("x"), Volumes: []volumeDoc{{Mount: "/m", Device: "vdb"}}, Variables: map[string]string{"A": "b"}})
	f.Add(run)
	f.Add(cfg)
	f.Add([]byte("\x81\xa5scope\x81\xa7headers\xdd\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := readDoc(bufio.NewReader(bytes.NewReader(b)), len(b))
		if err != nil {
			return
		}
		var r runRequest
		if msgpack.Unmarshal(doc, &r) == nil {
			requestHead(&r.Scope)
		}
		var c configDoc
		if msgpack.Unmarshal(doc, &c) == nil {
			translate(&c, t.TempDir(), "/tmp/s")
		}
	})
}

// A panic in init's configure path, which init's own sessions recover
// from, ends the connection and not the process.
func TestServeConnRecoversFromAPanic(t *testing.T) {
	s := hostileServer(t)
	s.opt.Configure = func(context.Context, []byte) *contract.ConfigError { panic("a bug in the configure path") }
	doc, _ := msgpack.Marshal(&configDoc{VMHash: "ab", Interface: "asgi", Encoding: "plain", Code: []byte("x"), Entrypoint: "main:app"})
	if out := exchangeRaw(t, s, append([]byte(strconv.Itoa(len(doc))+"\n"), doc...)); len(out) != 0 {
		t.Fatalf("answered %q", out)
	}
}

// A supervisor that goes silent in the middle of an instruction has its
// connection answered and closed once Idle has passed, not held for ever.
func TestStalledInstructionIsClosed(t *testing.T) {
	s := hostileServer(t)
	s.opt.Idle = 50 * time.Millisecond
	for _, in := range []string{"1", "12\n\x81", "h", "\x81\xa5sco"} {
		out := exchangeRaw(t, s, []byte(in))
		if len(out) == 0 {
			t.Errorf("%q: closed unanswered", in)
		}
		t.Logf("%q: %q", in, out)
	}
}
