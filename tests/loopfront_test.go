package tests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// loopFrontTiming are the cases whose outcome depends on timing under
// either front, besides those fidelityKnown marks so, with the reason:
// there the two fronts may differ.
var loopFrontTiming = map[string]string{
	"head-streamed":             "whether HEAD of a streamed body carries a Content-Length depends, under either front, on whether the body's frames arrive in one read (then the whole length is known before the head goes out) or apart",
	"get-1.0-streamed-response": "an HTTP/1.0 answer the app streams without a Content-Length is given one, under either front, when its whole body is there before the head goes out (else it ends with the connection): whether it is depends on whether the body's frames come in the same read as the head",
	"bad-chunk-size":            "whether the app sees the request depends on whether the agent's RESET (net/http found the bad chunk size) overtakes its REQUEST: on a worker's channel the worker reads the REQUEST first; through init (where the loop front sends what it hands to net/http) init usually has the RESET before it forwards the request, and forwards nothing",
}

// loopFrontMayDiffer reports why the fronts may differ on an aspect of a
// case, or "".
func loopFrontMayDiffer(name, aspect string) string {
	if why, ok := loopFrontTiming[name]; ok {
		return why
	}
	for _, key := range []string{name + "/" + aspect, name + "/*"} {
		if d, ok := fidelityKnown[key]; ok && d.timing {
			return "timing: " + d.why
		}
	}
	return ""
}

// The event-loop front serves every case of the fidelity harness as the
// net/http front does: the same statuses, headers (Date, Server and the
// agent's own request ids aside), bodies, framing, connection handling
// and the same request as the app saw it, field by field. The cases it
// serves itself and those it hands to net/http alike (percent-escapes,
// chunked bodies, Expect, HTTP/1.0, upgrades, malformed requests).
func TestLoopFrontServesAsNetHTTPDoes(t *testing.T) {
	requireRoot(t)
	requirePythonModules(t, "websockets")
	dir := writeApp(t, map[string]string{"fidelity_app.py": fidelityAppSource(t)})
	fronts := []string{"net/http", "loop"}
	addrs := make([]string, len(fronts))
	for i, f := range fronts {
		addrs[i], _ = runAgent(t, "--front", f, "--workers", "1", dir, "fidelity_app:app")
		fidelityTake(t, addrs[i])
	}
	outcomes := make([][]fidelityOutcome, len(fronts))
	var wg sync.WaitGroup
	for i := range fronts {
		wg.Go(func() {
			for _, c := range fidelityCases {
				o := fidelityExchange(addrs[i], c)
				app, err := fidelityTakeErr(addrs[i])
				if err != nil {
					o.err += " (the app's records: " + err.Error() + ")"
				}
				o.app = app
				outcomes[i] = append(outcomes[i], o)
			}
		})
	}
	wg.Wait()
	compared := 0
	for i, c := range fidelityCases {
		std, loop := loopFrontAspects(outcomes[0][i]), loopFrontAspects(outcomes[1][i])
		keys := map[string]bool{}
		for k := range std {
			keys[k] = true
		}
		for k := range loop {
			keys[k] = true
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			compared++
			key := c.name + "/" + k
			if std[k] == loop[k] {
				continue
			}
			if why := loopFrontMayDiffer(c.name, k); why != "" {
				t.Logf("known difference %s (%s): net/http %q, loop %q", key, why, fidelityShort(std[k]), fidelityShort(loop[k]))
				continue
			}
			t.Errorf("%s: net/http front %q, loop front %q", key, std[k], loop[k])
		}
	}
	t.Logf("%d cases, %d aspects compared", len(fidelityCases), compared)
}

// loopFrontAspects are an outcome's aspects with the agent's own request
// ids in its JSON error bodies left out (random, as in the headers).
func loopFrontAspects(o fidelityOutcome) map[string]string {
	a := o.aspects()
	for k, v := range a {
		a[k] = agentRequestID.ReplaceAllString(v, `"request_id":"(the agent's)"`)
	}
	return a
}

// agentRequestID is a request id the agent made up, in a JSON body.
var agentRequestID = regexp.MustCompile(`"request_id":"[0-9a-f]{16}"`)

// loopHostileApp answers the hostile cases of the event-loop front.
const loopHostileApp = `import asyncio
import time
from urllib.parse import parse_qs
async def body(receive):
    data = b""
    while True:
        m = await receive()
        data += m.get("body", b"")
        if not m.get("more_body"):
            return data
async def start(send, status, headers=()):
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(float(q["s"]))
        await start(send, 200, [(b"content-length", b"4")])
        await send({"type": "http.response.body", "body": b"slow"})
    elif path == "/block":
        time.sleep(float(q["s"]))  # blocks the worker: it reads nothing meanwhile
        await start(send, 200, [(b"content-length", b"5")])
        await send({"type": "http.response.body", "body": b"block"})
    elif path == "/excess-fin":  # one send, longer than its length
        await start(send, 200, [(b"content-length", b"5")])
        await send({"type": "http.response.body", "body": b"0123456789"})
    elif path == "/big-stream":  # 2 MiB, no length
        await start(send, 200, [(b"content-type", b"text/plain")])
        for _ in range(32):
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/cl-long":
        await start(send, 200, [(b"content-length", b"5")])
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": b" world", "more_body": True})
        await asyncio.sleep(30)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/no-body":
        await start(send, int(q["status"]), [(b"content-type", b"text/plain"), (b"content-length", b"18")])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/early":
        await start(send, 200, [(b"content-length", b"5")])
        await send({"type": "http.response.body", "body": b"early"})
    elif path == "/sleep-read":
        await asyncio.sleep(float(q["s"]))
        n = str(len(await body(receive))).encode()
        await start(send, 200, [(b"content-length", str(len(n)).encode())])
        await send({"type": "http.response.body", "body": n})
    elif path == "/fail-mid":
        await start(send, 200, [(b"content-type", b"text/plain")])
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("the app fails in the middle of its answer")
    elif path == "/window":  # most of a window, with its length
        await start(send, 200, [(b"content-length", b"250000")])
        await send({"type": "http.response.body", "body": b"w" * 250000})
    elif path == "/conn":
        await start(send, 200, [(b"connection", b"foo"), (b"content-length", b"2")])
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        await start(send, 200, [(b"content-length", b"2")])
        await send({"type": "http.response.body", "body": b"ok"})
`

// loopHostileFlags are the limits both agents of the hostile cases run
// with: short, so that the cases see them act.
var loopHostileFlags = []string{"--workers", "1", "--header-timeout", "1s", "--keepalive-timeout", "3s", "--body-timeout", "1s",
	"--timeout", "4s", "--max-concurrent", "1", "--queue-timeout", "200ms"}

// loopExchange writes raw to a new connection to addr (body, when set,
// from a goroutine as the responses are read, as a client streaming an
// upload does) and reads n responses and then whether the connection
// stays open; it returns what it read, normalised, as one string.
func loopExchange(addr, raw string, body []byte, n int) string {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte(raw)); err != nil {
		return "write: " + err.Error()
	}
	if body != nil {
		go conn.Write(body)
	}
	r := bufio.NewReader(conn)
	var out []string
	for range n {
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			out = append(out, "read: "+loopErr(err))
			return strings.Join(out, " | ")
		}
		b, err := io.ReadAll(resp.Body)
		var fields []string
		for name, vs := range resp.Header {
			if name == "Date" || name == "X-Request-Id" {
				continue
			}
			fields = append(fields, name+": "+strings.Join(vs, ","))
		}
		if resp.Close {
			fields = append(fields, "Connection: close") // (taken out of the header)
		}
		sort.Strings(fields)
		s := fmt.Sprintf("%d %v %q", resp.StatusCode, fields, agentRequestID.ReplaceAll(b, []byte("(id)")))
		if err != nil {
			s += " body: " + loopErr(err)
		}
		out = append(out, s)
	}
	// Well within the keep-alive limit (loopHostileFlags): "timeout"
	// means the connection stayed open. Longer than the body limit, since
	// the net/http front, after a 408 for a stalled body, discards the
	// rest for that long before it closes.
	conn.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	if _, err := r.ReadByte(); err != nil {
		out = append(out, "then "+loopErr(err))
	} else {
		out = append(out, "then more bytes")
	}
	return strings.Join(out, " | ")
}

// loopErr names a read's end: eof, reset, timeout or the error.
func loopErr(err error) string {
	var nerr net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.As(err, &nerr) && nerr.Timeout():
		return "timeout"
	}
	return err.Error()
}

// The event-loop front against clients and an app that misbehave, side
// by side with the net/http front, which it must match: time limits that
// fire on an idle agent (a partial head, a silent connection, an idle
// keep-alive, a stalled body, the program's own limit), a body the app
// does not read (answered, not reset), an app that sends more than its
// Content-Length or fails mid-answer, 204 and 304 with a length, the
// program's request limit, and the app's Connection field.
func TestLoopFrontHostileClientsAndApps(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	fronts := []string{"net/http", "loop"}
	addrs := make([]string, len(fronts))
	for i, f := range fronts {
		addrs[i], _ = runAgent(t, append([]string{"--front", f}, append(loopHostileFlags, dir, "main:app")...)...)
	}
	host := "Host: x\r\n"
	big := bytes.Repeat([]byte("b"), 1<<20)
	cases := []struct {
		name string
		raw  string
		body []byte
		n    int
		want string // the outcome, both fronts
		// wantHTTP, when set, is the net/http front's where it differs
		// (an app's error, which each front cuts its own way).
		wantHTTP string
	}{
		{"partial head", "GET / HTTP/1.1\r\n" + host, nil, 1, "read: eof", ""},
		{"silent connection", "", nil, 1, "read: eof", ""},
		{"stalled body", "POST /sleep-read?s=0 HTTP/1.1\r\n" + host + "Content-Length: 10\r\n\r\nabc", nil, 1,
			`408 [Connection: close Content-Length: 84 Content-Type: application/json] "{\"error\":\"the request body did not arrive in time\",(id)}\n" | then eof`, ""},
		{"program's time limit", "GET /slow?s=6 HTTP/1.1\r\n" + host + "\r\n", nil, 1,
			`504 [Content-Length: 79 Content-Type: application/json] "{\"error\":\"the program did not answer in time\",(id)}\n" | then timeout`, ""},
		{"more body than its length", "GET /cl-long HTTP/1.1\r\n" + host + "\r\n", nil, 1, `200 [Connection: close Content-Length: 5] "hello" | then eof`,
			`200 [Content-Length: 5] "" body: eof | then eof`},
		{"more body than its length in its last send", "GET /excess-fin HTTP/1.1\r\n" + host + "\r\n", nil, 1,
			`200 [Connection: close Content-Length: 5] "01234" | then eof`, `200 [Content-Length: 5] "" body: eof | then eof`},
		{"204 with a length", "GET /no-body?status=204 HTTP/1.1\r\n" + host + "\r\nGET / HTTP/1.1\r\n" + host + "\r\n", nil, 2,
			`204 [Content-Type: text/plain] "" | 200 [Content-Length: 2] "ok" | then timeout`, ""},
		{"304 with a length", "GET /no-body?status=304 HTTP/1.1\r\n" + host + "\r\nGET / HTTP/1.1\r\n" + host + "\r\n", nil, 2,
			`304 [] "" | 200 [Content-Length: 2] "ok" | then timeout`, ""},
		{"1 MiB the app does not read", "POST /early HTTP/1.1\r\n" + host + "Content-Length: 1048576\r\n\r\n", big, 1,
			`200 [Connection: close Content-Length: 5] "early" | then eof`, ""},
		{"100 KiB the app does not read, then a request", "POST /early HTTP/1.1\r\n" + host + "Content-Length: 102400\r\n\r\n" +
			string(big[:100<<10]) + "GET / HTTP/1.1\r\n" + host + "\r\n", nil, 2, `200 [Content-Length: 5] "early" | 200 [Content-Length: 2] "ok" | then timeout`, ""},
		{"body the app reads late", "POST /sleep-read?s=2 HTTP/1.1\r\n" + host + "Content-Length: 1048576\r\n\r\n", big, 1,
			`200 [Content-Length: 7] "1048576" | then timeout`, ""},
		{"app fails mid-answer", "GET /fail-mid HTTP/1.1\r\n" + host + "\r\n", nil, 1, `200 [Content-Type: text/plain] "part" body: eof | then eof`, ""},
		{"app's Connection field, client closes", "GET /conn HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n", nil, 1,
			`200 [Connection: close Content-Length: 2] "ok" | then eof`, ""},
		{"app's Connection field", "GET /conn HTTP/1.1\r\n" + host + "\r\n", nil, 1, `200 [Connection: foo Content-Length: 2] "ok" | then timeout`, ""},
	}
	for _, c := range cases {
		for i, f := range fronts {
			want := c.want
			if f == "net/http" && c.wantHTTP != "" {
				want = c.wantHTTP
			}
			if got := loopExchange(addrs[i], c.raw, c.body, c.n); got != want {
				t.Errorf("%s, %s front:\n got %s\nwant %s", c.name, f, got, want)
			}
		}
	}

	// At the program's limit (one request), a request that asks to close
	// gets its 503 with Connection: close, and the close.
	for i, f := range fronts {
		held := make(chan string, 1)
		go func() { held <- loopExchange(addrs[i], "GET /slow?s=2 HTTP/1.1\r\n"+host+"\r\n", nil, 1) }()
		time.Sleep(500 * time.Millisecond)
		got := loopExchange(addrs[i], "GET / HTTP/1.1\r\n"+host+"Connection: close\r\n\r\n", nil, 1)
		want := `503 [Connection: close Content-Length: 112 Content-Type: application/json Retry-After: 1] "{\"error\":\"the program is at its limit of concurrent requests; try again later\",(id)}\n" | then eof`
		if got != want {
			t.Errorf("at the limit, %s front:\n got %s\nwant %s", f, got, want)
		}
		if got := <-held; got != `200 [Content-Length: 4] "slow" | then timeout` {
			t.Errorf("the request holding the limit, %s front: %s", f, got)
		}
	}
}

// An agent told to stop (SIGTERM) finishes the requests in flight before
// it stops the VM, behind either front.
func TestLoopFrontDrainsOnStop(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	for _, f := range []string{"net/http", "loop"} {
		t.Run(f, func(t *testing.T) {
			p := startAgent(t, "run", agentOptions{}, "--front", f, "--workers", "1", dir, "main:app")
			got := make(chan string, 1)
			go func() { got <- loopExchange(p.addr, "GET /slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n", nil, 1) }()
			time.Sleep(700 * time.Millisecond)
			p.cmd.Process.Signal(syscall.SIGTERM)
			if g := <-got; !strings.HasPrefix(g, "200 ") || !strings.Contains(g, `"slow"`) {
				t.Errorf("the request in flight at the stop: %s", g)
			}
		})
	}
}

// Requests with big heads that queue up toward a worker that has stopped
// reading its channel (a blocking call in the app) all get their answers
// once it reads again. Their frames wait in the loop's queue toward the
// worker, which the worker drains a part at a time: a head written into a
// queue whose front was partly sent once went to a stale offset, and the
// worker read a corrupt frame (502s).
func TestLoopFrontBigHeadsQueuedToABusyWorker(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	addr, _ := runAgent(t, "--front", "loop", "--workers", "1", dir, "main:app")
	blocked := make(chan string, 1)
	go func() { blocked <- loopExchange(addr, "GET /block?s=2 HTTP/1.1\r\nHost: x\r\n\r\n", nil, 1) }()
	time.Sleep(300 * time.Millisecond)
	const clients = 48
	got := make(chan string, clients)
	for i := range clients {
		// Heads of 8 to 31 KiB: together far more than a socket buffer.
		pad := strings.Repeat("p", (8<<10)+i*(23<<10)/clients)
		go func() { got <- loopExchange(addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad+"\r\n\r\n", nil, 1) }()
	}
	want := `200 [Content-Length: 2] "ok" | then timeout`
	bad := 0
	for range clients {
		if g := <-got; g != want {
			if bad++; bad <= 3 {
				t.Errorf("a request queued behind the blocked worker: %s", g)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d requests failed", bad, clients)
	}
	if g := <-blocked; g != `200 [Content-Length: 5] "block" | then timeout` {
		t.Errorf("the blocking request: %s", g)
	}
}

// A HEAD request for a long streamed body: the loop discards the body
// the worker sends and still returns its credit, so that the worker ends
// the stream and the connection's next request is served (the loop once
// returned only the first window's credit: the stream, the connection
// and the program's slot stayed held until the client left).
func TestLoopFrontHeadOfALongBody(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	for _, f := range []string{"net/http", "loop"} {
		t.Run(strings.ReplaceAll(f, "/", "-"), func(t *testing.T) {
			addr, _ := runAgent(t, "--front", f, "--workers", "1", dir, "main:app")
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			conn.Write([]byte("HEAD /big-stream HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			br := bufio.NewReader(conn)
			var got []string
			for _, m := range []string{"HEAD", "GET"} {
				resp, err := http.ReadResponse(br, &http.Request{Method: m})
				if err != nil {
					got = append(got, m+": "+loopErr(err))
					break
				}
				b, _ := io.ReadAll(resp.Body)
				got = append(got, fmt.Sprintf("%s: %d %q", m, resp.StatusCode, b))
			}
			if g := strings.Join(got, " | "); g != `HEAD: 200 "" | GET: 200 "ok"` {
				t.Errorf("%s front: %s", f, g)
			}
		})
	}
}

// An agent told to stop serves the requests it has taken, those waiting
// for a slot of the program's limit included, behind either front (the
// loop once closed a waiting request's connection without an answer).
func TestLoopFrontDrainServesWaitingRequests(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	for _, f := range []string{"net/http", "loop"} {
		t.Run(strings.ReplaceAll(f, "/", "-"), func(t *testing.T) {
			p := startAgent(t, "run", agentOptions{}, "--front", f, "--workers", "1", "--max-concurrent", "1", "--queue-timeout", "5s", dir, "main:app")
			first, waiting := make(chan string, 1), make(chan string, 1)
			go func() { first <- loopExchange(p.addr, "GET /slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n", nil, 1) }()
			time.Sleep(500 * time.Millisecond)
			go func() { waiting <- loopExchange(p.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", nil, 1) }()
			time.Sleep(500 * time.Millisecond)
			p.cmd.Process.Signal(syscall.SIGTERM)
			if g := <-first; !strings.HasPrefix(g, "200 ") {
				t.Errorf("the request in flight at the stop: %s", g)
			}
			if g := <-waiting; !strings.HasPrefix(g, "200 ") {
				t.Errorf("the request waiting for the program's slot at the stop: %s", g)
			}
		})
	}
}
