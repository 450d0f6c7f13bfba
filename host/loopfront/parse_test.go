package loopfront

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/protocol/frame"
)

// The loop relays only requests under its strict subset of HTTP/1.1 and
// leaves everything else to net/http: each refusal here is a request the
// net/http server answers (or refuses) instead.
func TestParseTakesOnlyTheStrictSubset(t *testing.T) {
	l := &loop{}
	c := &client{host: []byte("10.0.0.1"), port: 5000, local: []byte("127.0.0.1"), localPort: 8080}
	head := func(lines ...string) []byte { return []byte(strings.Join(lines, "\r\n")) }
	for _, ok := range [][]byte{
		head("GET / HTTP/1.1", "Host: x"),
		head("POST /a/b;c=d HTTP/1.1", "Host: x:80", "Content-Length: 0012", "X-Empty:", "X-Tab:\tv\t"),
		head("GET /q?a=%20b&c=%zz HTTP/1.1", "host: x", "Connection: keep-alive, close"),
		head("PURGE /~u/!$&'()*+,;=:@ HTTP/1.1", "Host: x"),
	} {
		var fs fields
		if _, got := l.parse(c, ok, &fs); !got {
			t.Errorf("refused %q", ok)
		}
	}
	for _, refused := range [][]byte{
		head("GET / HTTP/1.0", "Host: x"),
		head("GET / HTTP/1.1"),
		head("GET / HTTP/1.1", "Host: x", "Host: y"),
		head("GET /a%2Fb HTTP/1.1", "Host: x"),
		head("GET //a HTTP/1.1", "Host: x"),
		head("GET http://x/ HTTP/1.1", "Host: x"),
		head("OPTIONS * HTTP/1.1", "Host: x"),
		head("GET /caf\xc3\xa9 HTTP/1.1", "Host: x"),
		head("GET /f#frag HTTP/1.1", "Host: x"),
		head("GET / HTTP/1.1", "Host: x", "Transfer-Encoding: chunked"),
		head("POST / HTTP/1.1", "Host: x", "Content-Length: 1", "Content-Length: 1"),
		head("POST / HTTP/1.1", "Host: x", "Content-Length: -0"),
		head("POST / HTTP/1.1", "Host: x", "Content-Length: +1"),
		head("POST / HTTP/1.1", "Host: x", "Content-Length: 1 2"),
		head("POST / HTTP/1.1", "Host: x", "Expect: 100-continue"),
		head("GET / HTTP/1.1", "Host: x", "Upgrade: websocket", "Connection: Upgrade"),
		head("GET / HTTP/1.1", "Host: x", "Connection: upgrade"),
		head("GET / HTTP/1.1", "Host: x", "TE: trailers"),
		head("GET / HTTP/1.1", "Host: x", "X-Fold: a", " b"),
		head("GET / HTTP/1.1", "Host: x", "X-Bad : v"),
		head("GET / HTTP/1.1", "Host: x", "X-Nul: a\x00b"),
		head("GET / HTTP/1.1", "Host: x", "X-Bare: a\nb"),
		head("GET / HTTP/1.1", "Host: bad host"),
		head("GET  / HTTP/1.1", "Host: x"),
		head("G@T / HTTP/1.1", "Host: x"),
	} {
		var fs fields
		if _, got := l.parse(c, refused, &fs); got {
			t.Errorf("took %q", refused)
		}
	}
}

// What parse takes it gives the worker as uvicorn would: names in lower
// case, values trimmed, the fields in the order sent, the query raw.
func TestParseFillsTheRequestHead(t *testing.T) {
	l := &loop{}
	c := &client{host: []byte("10.0.0.1"), port: 5000, local: []byte("127.0.0.1"), localPort: 8080}
	in := []byte("POST /items/42?q=a%20b HTTP/1.1\r\nX-Request-Id: abc\r\nHost: app.test\r\nContent-Length: 5\r\nX-Space:  v w \r\nConnection: close")
	var fs fields
	path, ok := l.parse(c, in, &fs)
	if !ok || path != "/items/42" || fs.length != 5 || !fs.closeAfter || string(fs.host) != "app.test" || string(fs.requestID) != "abc" {
		t.Fatalf("parse: %q %v %+v", path, ok, fs)
	}
	h := &l.head
	if string(h.Method) != "POST" || string(h.HTTPVersion) != "1.1" || string(h.QueryString) != "q=a%20b" || string(h.ClientHost) != "10.0.0.1" ||
		h.ClientPort != 5000 || string(h.ServerHost) != "127.0.0.1" || h.ServerPort != 8080 || string(h.Scheme) != "http" {
		t.Fatalf("head: %+v", h)
	}
	var got []string
	for _, f := range h.Headers {
		got = append(got, string(f.Name)+"="+string(f.Value))
	}
	want := "x-request-id=abc host=app.test content-length=5 x-space=v w connection=close"
	if strings.Join(got, " ") != want {
		t.Fatalf("fields %q, want %q", strings.Join(got, " "), want)
	}
}

// The queue gives back what went in, in order, whatever mix of writes,
// reads into its tail and consumption, and a steady stream through it
// does not grow its array.
func TestQueueKeepsOrderAndItsArray(t *testing.T) {
	var q queue
	var want []byte
	next, most := byte(0), 0
	fill := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = next
			next++
		}
		return p
	}
	for round := range 2000 {
		switch round % 3 {
		case 0:
			p := fill(1 + round%700)
			q.write(p)
			want = append(want, p...)
		case 1:
			p := fill(1 + round%500)
			copy(q.tail(len(p)), p)
			q.commit(len(p))
			want = append(want, p...)
		case 2:
			n := min(q.len(), 1+round%1200)
			if string(q.bytes()[:n]) != string(want[:n]) {
				t.Fatalf("round %d: the queue's bytes differ from what went in", round)
			}
			q.consume(n)
			want = want[n:]
		}
		if string(q.bytes()) != string(want) {
			t.Fatalf("round %d: %d bytes waiting, want %d", round, q.len(), len(want))
		}
		most = max(most, q.len())
	}
	if cap(q.b) > 4*most+(4<<10) {
		t.Fatalf("the array grew to %d bytes for at most %d waiting", cap(q.b), most)
	}
}

// A frame opened on a queue whose front the worker has partly consumed
// lands whole after the waiting bytes, even when making room for it moves
// them down (the REQUEST header once went to a stale offset there, and
// the worker read a corrupt frame).
func TestQueueFramesSurviveCompaction(t *testing.T) {
	var q queue
	var want []byte // the waiting bytes a worker should read
	put := func(id uint32, payload []byte, hint int) {
		at := q.openFrame(hint)
		q.b = append(q.b, payload...)
		size := q.frameSize(at)
		frame.AppendHeader(q.b[at:at], frame.Header{Type: frame.TypeRequest, StreamID: id, Length: uint32(size)})
		want = appendFrame(want, frame.TypeRequest, 0, id, payload)
	}
	take := func(n int) {
		if string(q.bytes()[:n]) != string(want[:n]) {
			t.Fatalf("the queue's bytes differ from the frames put in")
		}
		q.consume(n)
		want = want[n:]
	}
	// The case the review found: a 4 KiB array three quarters consumed,
	// then a head that needs the room.
	put(1, bytes.Repeat([]byte("q"), 4000-frame.HeaderSize), 0)
	take(3000)
	put(3, bytes.Repeat([]byte("h"), 500), 500)
	if string(q.bytes()) != string(want) {
		t.Fatalf("after a compaction the queue holds %d bytes, want %d", q.len(), len(want))
	}
	h := frame.ParseHeader(q.bytes()[1000:])
	if h.Type != frame.TypeRequest || h.StreamID != 3 || h.Length != 500 {
		t.Fatalf("the worker reads %+v, want REQUEST 3 of 500 bytes", h)
	}
	// Then many frames of all sizes, with hints short of, equal to and
	// beyond their payloads, and the worker consuming at any byte.
	for round := range 3000 {
		n := (round * 7919) % 9000
		put(uint32(5+2*round), bytes.Repeat([]byte{byte(round)}, n), []int{0, n, 2 * n}[round%3])
		if round%2 == 1 {
			take(min(len(want), (round*104729)%13000))
		}
	}
	take(len(want))
}

// Between requests, once a tick, a client and an idle channel give back
// the big arrays a body grew; a client or channel with a request on it
// keeps them, so that its body reuses one array.
func TestExpireFreesIdleArraysOnly(t *testing.T) {
	hour := time.Hour
	l := &loop{f: &Front{opt: Options{Limits: front.ConnLimits{Header: hour, Body: hour, Send: hour, Keepalive: hour}}},
		clients: map[int]*client{}, channels: map[int]*channel{}, epoch: time.Now()}
	grown := func() queue {
		var q queue
		q.write(make([]byte, 200<<10))
		q.consume(200 << 10)
		return q
	}
	idle := &client{fd: 10, in: grown(), out: grown(), served: 1}
	busy := &client{fd: 11, in: grown(), out: grown(), served: 1, req: &request{}}
	quiet := &channel{fd: 12, in: grown(), out: grown()}
	working := &channel{fd: 13, in: grown(), out: grown(), outstanding: 1}
	l.clients[10], l.clients[11] = idle, busy
	l.channels[12], l.channels[13] = quiet, working
	l.expire(l.now())
	for name, q := range map[string]*queue{"idle client's input": &idle.in, "idle client's output": &idle.out,
		"idle channel's input": &quiet.in, "idle channel's output": &quiet.out} {
		if cap(q.b) != 0 {
			t.Errorf("%s keeps %d bytes", name, cap(q.b))
		}
	}
	for name, q := range map[string]*queue{"busy client's input": &busy.in, "busy client's output": &busy.out,
		"busy channel's input": &working.in, "busy channel's output": &working.out} {
		if cap(q.b) < 200<<10 {
			t.Errorf("%s lost its array (%d bytes)", name, cap(q.b))
		}
	}
}

// headEnd finds a head's end however its bytes arrive, a few at a time
// included (it searches only what came since its last call, so a slow
// client's head costs linear time, not quadratic), finds it again while
// the head waits, and tells a bare line feed apart from "\r\n".
func TestHeadEndAcrossReads(t *testing.T) {
	heads := []struct {
		text   string
		end    int
		bareLF bool
	}{
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next", 23, false},
		{"GET / HTTP/1.1\r\nHost: x\nA: b\n\n", -1, true},
		{"GET / HTTP/1.1\r\n\r\n", 14, false},
		{"\nGET", -1, true},
	}
	for _, h := range heads {
		for _, step := range []int{1, 2, 3, 5, len(h.text)} {
			var q queue
			end, bare := -1, false
			for at := 0; at < len(h.text) && end < 0 && !bare; at += step {
				q.write([]byte(h.text[at:min(at+step, len(h.text))]))
				end, bare = q.headEnd()
			}
			if end != h.end || bare != h.bareLF {
				t.Errorf("%q in reads of %d bytes: end %d, bare LF %v; want %d, %v", h.text, step, end, bare, h.end, h.bareLF)
			}
			if end >= 0 {
				if again, _ := q.headEnd(); again != end {
					t.Errorf("%q asked again: end %d, want %d", h.text, again, end)
				}
				q.consume(end + 4)
				if next, _ := q.headEnd(); next >= 0 {
					t.Errorf("%q: after the head is consumed, its rest %q has an end at %d", h.text, q.bytes(), next)
				}
			}
		}
	}
}
