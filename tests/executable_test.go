package tests

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// httpProgram is the executable under test: a small HTTP/1.1 server in
// Python's standard library, serving on $PORT.
const httpProgram = `#!/usr/bin/python3
import gzip, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

release = threading.Event()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        print("request", self.command, self.path, flush=True)

    def send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/teapot"):
            self.send(418, b"short and stout", [("X-Pid", str(os.getpid())), ("X-Query", self.path.partition("?")[2]),
                                                ("X-Host-Seen", self.headers["Host"])])
        elif self.path == "/redirect":
            self.send(302, b"", [("Location", "/elsewhere?x=1")])
        elif self.path == "/gzip":
            self.send(200, gzip.compress(b"compressed body"), [("Content-Encoding", "gzip")])
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                if i == 4:
                    release.wait(30)   # the test reads the first chunks before this
                data = b"part %d\n" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/release":
            release.set()
            self.send(200, b"released")
        elif self.path == "/upgrade":
            # A made-up protocol after 101: upper-cases what it receives.
            self.send_response(101)
            self.send_header("Upgrade", "shout")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(4096)
                if not data:
                    break
                self.connection.sendall(data.upper())
            self.close_connection = True
        elif self.path == "/crash":
            print("crashing on purpose", flush=True)
            os._exit(3)
        else:
            self.send(404, b"not found")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.send(200, body.upper(), [("Content-Type", "text/plain")])

print("listening on", os.environ["PORT"], flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
`

// The executable interface relays status, headers, bodies and redirects
// untouched, streams chunked responses, and restarts a crashed program.
func TestExecutableRelay(t *testing.T) {
	requirePythonModules(t, "http.server")
	code := writeApp(t, map[string]string{"server.py": httpProgram})
	if err := chmodX(code + "/server.py"); err != nil {
		t.Fatal(err)
	}
	d := startDevInit(t)
	d.mustConfigure(t, map[string]any{
		"program_id": "exe", "interface": "executable", "entrypoint": "server.py", "port": 18231,
		"code": map[string]any{"encoding": "directory", "path": code},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	r, err := request(ctx, d.sess, "GET", "/teapot?a=1&b=%20", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != 418 || string(r.body) != "short and stout" || r.headers["x-query"] != "a=1&b=%20" ||
		r.headers["x-host-seen"] != "test.example" || r.headers["content-length"] != "15" {
		t.Fatalf("teapot: %d %v %q", r.status, r.headers, r.body)
	}
	firstPid := r.headers["x-pid"]

	r, err = request(ctx, d.sess, "GET", "/redirect", nil, nil)
	if err != nil || r.status != 302 || r.headers["location"] != "/elsewhere?x=1" {
		t.Fatalf("redirect was not passed through: %+v %v", r, err)
	}
	r, err = request(ctx, d.sess, "GET", "/gzip", nil, nil)
	if err != nil || r.headers["content-encoding"] != "gzip" || len(r.body) < 2 || r.body[0] != 0x1f || r.body[1] != 0x8b {
		t.Fatalf("encoded body was altered: %+v %v", r, err)
	}
	r, err = request(ctx, d.sess, "POST", "/upper", map[string]string{"content-length": "5"}, []byte("hello"))
	if err != nil || r.status != 200 || string(r.body) != "HELLO" {
		t.Fatalf("post: %+v %v", r, err)
	}

	// A chunked response streams: its first parts arrive while the
	// program still holds back the last.
	st, err := d.sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/stream")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil || rh.Status != 200 {
		t.Fatalf("stream head %+v %v", rh, err)
	}
	for _, h := range rh.Headers {
		if string(h.Name) == "transfer-encoding" {
			t.Errorf("hop-by-hop header relayed: %s", h.Name)
		}
	}
	first := make([]byte, len("part 0\npart 1\npart 2\npart 3\n"))
	if _, err := io.ReadFull(st, first); err != nil || !strings.HasPrefix(string(first), "part 0\n") {
		t.Fatalf("first parts %q %v", first, err)
	}
	if r, err := request(ctx, d.sess, "GET", "/release", nil, nil); err != nil || r.status != 200 {
		t.Fatalf("release: %v %v", r, err)
	}
	if rest, err := io.ReadAll(st); err != nil || string(rest) != "part 4\n" {
		t.Fatalf("last part %q %v", rest, err)
	}

	// An upgrade is passed through: after the 101, raw bytes both ways.
	up, err := d.sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/upgrade"), Headers: []message.HeaderField{
		{Name: []byte("connection"), Value: []byte("Upgrade")}, {Name: []byte("upgrade"), Value: []byte("shout")}}}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.ReadResponse(ctx, &rh); err != nil || rh.Status != 101 {
		t.Fatalf("upgrade answered %+v %v", rh, err)
	}
	up.Write([]byte("hello over raw bytes"))
	echo := make([]byte, len("hello over raw bytes"))
	if _, err := io.ReadFull(up, echo); err != nil || string(echo) != "HELLO OVER RAW BYTES" {
		t.Fatalf("upgraded echo %q %v", echo, err)
	}
	up.CloseWrite()
	if rest, err := io.ReadAll(up); err != nil || len(rest) != 0 {
		t.Fatalf("after closing the upgraded stream: %q %v", rest, err)
	}

	// A crash resets the request in flight; the program comes back.
	if _, err := request(ctx, d.sess, "GET", "/crash", nil, nil); streamErrorCode(err) != int(frame.CodeWorkerLost) {
		t.Fatalf("request that crashed the program: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := request(ctx, d.sess, "GET", "/teapot", nil, nil)
		if err == nil && r.status == 418 {
			if r.headers["x-pid"] == firstPid {
				t.Fatalf("same pid %s after the crash", firstPid)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("program did not come back: %v %v", r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	logs := strings.Join(d.logLines(), "\n")
	if !strings.Contains(logs, "stdout[0] crashing on purpose") || !strings.Contains(logs, fmt.Sprintf("listening on %d", 18231)) {
		t.Fatalf("program output missing from LOG frames:\n%s", logs)
	}
}

// A program that exits before it listens is a structured error with its
// last output lines.
func TestExecutableThatNeverListensIsAStructuredError(t *testing.T) {
	code := writeApp(t, map[string]string{"fail.sh": "#!/bin/sh\necho 'missing DATABASE_URL' >&2\nexit 4\n"})
	if err := chmodX(code + "/fail.sh"); err != nil {
		t.Fatal(err)
	}
	d := startDevInit(t)
	r := d.configure(t, map[string]any{
		"program_id": "exe", "interface": "executable", "entrypoint": "fail.sh", "port": 18232,
		"code": map[string]any{"encoding": "directory", "path": code},
	})
	if r.OK || string(r.Phase) != "app" || !strings.Contains(string(r.Message), "exited") || !strings.Contains(string(r.Detail), "missing DATABASE_URL") {
		t.Fatalf("result ok=%v phase=%q message=%q detail=%q", r.OK, r.Phase, r.Message, r.Detail)
	}
}
