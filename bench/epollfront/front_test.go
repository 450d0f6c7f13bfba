package epollfront

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/app/asgi"
)

const python = "/usr/bin/python3"

// testApp answers / with a fixed body, /stream in two chunks without a
// Content-Length, /big with 1 MiB and /upload with the length of the body.
const testApp = `
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path == "/wait":
        # Until the client is gone (the worker's http.disconnect, on the
        # front's RESET); then a line in disconnects.log.
        while (await receive())["type"] != "http.disconnect":
            pass
        with open("disconnects.log", "a") as log:
            log.write("gone\n")
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one,", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
        return
    body = b"hello " + scope["query_string"]
    if path == "/big":
        body = b"x" * (1 << 20)
    elif path == "/upload":
        size, more = 0, True
        while more:
            m = await receive()
            size += len(m.get("body", b""))
            more = m.get("more_body", False)
        body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
`

// startFront runs the front with two workers on testApp and returns its
// address once it answers; the front stops when the test ends.
func startFront(t *testing.T) string {
	t.Helper()
	base, _ := startFrontIn(t)
	return base
}

// startFrontIn is startFront that also returns the app's directory.
func startFrontIn(t *testing.T) (string, string) {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		t.Skipf("needs %s (Debian's python3): %v", python, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "testapp.py"), []byte(testApp), 0o644); err != nil {
		t.Fatal(err)
	}
	script, err := asgi.WriteWorkerScript(dir)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Listen: addr, Workers: 2, Python: python, Script: script, CodeDir: dir, App: "testapp:app",
			Output: io.Discard, Log: slog.New(slog.DiscardHandler)})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	base := "http://" + addr.String()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(base + "/")
		if err == nil {
			resp.Body.Close()
			return base, dir
		}
		select {
		case err := <-done:
			t.Fatalf("Run ended before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the front did not answer: %v", err)
		}
	}
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestRelaysRequestsAndResponses(t *testing.T) {
	base := startFront(t)
	if resp, body := get(t, base+"/?a=1"); resp.StatusCode != 200 || body != "hello a=1" || resp.Header.Get("Date") == "" {
		t.Fatalf("GET /?a=1: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, body := get(t, base+"/stream"); body != "one,two" || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("GET /stream: %q, transfer encoding %v", body, resp.TransferEncoding)
	}
	if _, body := get(t, base+"/big"); len(body) != 1<<20 {
		t.Fatalf("GET /big: %d bytes", len(body))
	}
	resp, err := http.Post(base+"/upload", "application/octet-stream", strings.NewReader(strings.Repeat("y", 40000)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "40000" {
		t.Fatalf("POST /upload of 40000 bytes: %d %q", resp.StatusCode, body)
	}
}

func TestAResponseToHEADHasNoBody(t *testing.T) {
	base := startFront(t)
	conn := dial(t, base)
	// The app sends its body to HEAD too; the next response on the
	// connection must start where the first one's head ends.
	if _, err := io.WriteString(conn, "HEAD /big HTTP/1.1\r\nHost: x\r\n\r\nGET /?after HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	head, err := http.ReadResponse(r, &http.Request{Method: "HEAD"})
	if err != nil || head.ContentLength != 1<<20 {
		t.Fatalf("HEAD /big: %v, %+v", err, head)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("the response after HEAD: %v", err)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != "hello after" {
		t.Fatalf("the response after HEAD: %q", body)
	}
}

func TestPipelinedRequestsAreAnsweredInOrder(t *testing.T) {
	base := startFront(t)
	conn := dial(t, base)
	var all strings.Builder
	for i := range 5 {
		fmt.Fprintf(&all, "GET /?n=%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
	}
	if _, err := io.WriteString(conn, all.String()); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for i := range 5 {
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if want := "hello n=" + strconv.Itoa(i); string(body) != want {
			t.Fatalf("response %d: %q, want %q", i, body, want)
		}
	}
}

// dial connects to the front; the connection is closed when the test
// ends, if not before.
func dial(t *testing.T, base string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// exchange writes raw bytes on a new connection and reads until the front
// closes it.
func exchange(t *testing.T, base, raw string) string {
	t.Helper()
	conn := dial(t, base)
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("%q: the connection was not closed: %v (read %q)", raw, err, out)
	}
	return string(out)
}

func TestWhatThePrototypeDoesNotServeIsRefused(t *testing.T) {
	base := startFront(t)
	for raw, status := range map[string]string{
		"NOT A REQUEST\r\n\r\n":                                                   "400",
		"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n":                                   "400",
		"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n":                                    "400",
		"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n":        "400",
		"GET / HTTP/2.0\r\n\r\n":                                                  "505",
		"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n":    "501",
		"GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 40<<10) + "\r\n\r\n":        "431",
		"POST /upload HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n":              "413",
		"GET /?v=10 HTTP/1.0\r\n\r\n":                                             "200",
		"GET /?close HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n": "200",
	} {
		out := exchange(t, base, raw)
		if !strings.HasPrefix(out, "HTTP/1.1 "+status+" ") {
			t.Errorf("%.40q: answered %.60q, want status %s", raw, out, status)
		}
		if status == "200" && strings.Count(out, "HTTP/1.1") != 1 {
			t.Errorf("%.40q: more than one response before the close: %q", raw, out)
		}
	}
	// The front still serves.
	if _, body := get(t, base+"/"); body != "hello " {
		t.Fatalf("after the refusals: %q", body)
	}
}

func TestAClientThatVanishesMidResponseCostsOnlyItsStream(t *testing.T) {
	base := startFront(t)
	for range 20 {
		conn := dial(t, base)
		io.WriteString(conn, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
		buf := make([]byte, 1000)
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
		conn.Close() // with most of the megabyte unread
	}
	if _, body := get(t, base+"/big"); len(body) != 1<<20 {
		t.Fatalf("GET /big after 20 abandoned ones: %d bytes", len(body))
	}
}

func TestHTTP10ResponsesEndWithTheConnectionNotChunks(t *testing.T) {
	base := startFront(t)
	out := exchange(t, base, "GET /stream HTTP/1.0\r\n\r\n")
	if strings.Contains(strings.ToLower(out), "transfer-encoding") || !strings.HasSuffix(out, "\r\n\r\none,two") {
		t.Fatalf("GET /stream over HTTP/1.0: %q", out)
	}
}

func TestExpectContinueIsAnswered(t *testing.T) {
	base := startFront(t)
	conn := dial(t, base)
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("before the body: %q, %v", line, err)
	}
	r.ReadString('\n')
	io.WriteString(conn, "abcde")
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != "5" {
		t.Fatalf("POST /upload after 100 Continue: %q", body)
	}
}

// A client that pipelines requests and reads none of the responses must
// not make the front hold what it sends: the front stops reading it, so
// the client's writes stall long before 64 MiB.
func TestAClientThatDoesNotReadIsNotBuffered(t *testing.T) {
	base := startFront(t)
	conn := dial(t, base)
	request := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	chunk := []byte(strings.Repeat(request, (1<<20)/len(request)))
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	written := 0
	var err error
	for written < 64<<20 && err == nil {
		var n int
		n, err = conn.Write(chunk)
		written += n
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the front took %d MiB of pipelined requests from a client that reads nothing (%v); its writes should have stalled", written>>20, err)
	}
	t.Logf("the client's writes stalled after %.1f MiB", float64(written)/(1<<20))
	// The front still serves others.
	if _, body := get(t, base+"/"); body != "hello " {
		t.Fatalf("another client: %q", body)
	}
}

// A client that goes away while its request is in the app is a RESET to
// the worker, which tells the app (http.disconnect).
func TestAClientThatGoesAwayIsAResetForTheApp(t *testing.T) {
	base, dir := startFrontIn(t)
	for range 3 {
		conn := dial(t, base)
		io.WriteString(conn, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
		time.Sleep(100 * time.Millisecond) // the request reaches the app
		conn.Close()
	}
	var log []byte
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if log, _ = os.ReadFile(filepath.Join(dir, "disconnects.log")); strings.Count(string(log), "gone") == 3 {
			return
		}
	}
	t.Fatalf("the app saw %d of 3 clients go", strings.Count(string(log), "gone"))
}
