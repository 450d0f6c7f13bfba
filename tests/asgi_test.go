package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

const fastapiApp = `
import os
from fastapi import FastAPI

app = FastAPI()

@app.get("/items/{item_id}")
async def item(item_id: int, q: str = ""):
    return {"item_id": item_id, "q": q, "pid": os.getpid()}

@app.post("/echo")
async def echo(payload: dict):
    return {"got": payload}
`

func TestFastAPIJSONRoute(t *testing.T) {
	requirePythonModules(t, "fastapi")
	code := writeApp(t, map[string]string{"main.py": fastapiApp})
	d := startDevInit(t)
	d.mustConfigure(t, asgiConfig(code, "main:app", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := request(ctx, d.sess, "GET", "/items/42?q=ferry", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := jsonBody(t, r)
	if r.status != 200 || got["item_id"] != float64(42) || got["q"] != "ferry" || r.headers["content-type"] != "application/json" {
		t.Fatalf("GET answered %d %v %v", r.status, r.headers, got)
	}
	r, err = request(ctx, d.sess, "POST", "/echo", map[string]string{"content-type": "application/json"}, []byte(`{"a": [1, 2]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonBody(t, r); r.status != 200 || got["got"].(map[string]any)["a"].([]any)[1] != float64(2) {
		t.Fatalf("POST answered %d %v", r.status, got)
	}
	r, err = request(ctx, d.sess, "GET", "/items/notanumber", nil, nil)
	if err != nil || r.status != 422 {
		t.Fatalf("validation error answered %v %v", r, err)
	}
}

const starletteApp = `
import asyncio, contextlib, hashlib
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

release = asyncio.Event()

async def chunks(request):
    async def gen():
        for i in range(999):
            yield b"chunk %04d\n" % i
        await release.wait()          # the test reads the first chunk before this
        yield b"chunk 0999\n"
    return StreamingResponse(gen(), media_type="text/plain")

async def do_release(request):
    release.set()
    return JSONResponse({"released": True})

async def upload(request):
    h, n = hashlib.sha256(), 0
    async for chunk in request.stream():
        h.update(chunk)
        n += len(chunk)
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return JSONResponse({"bytes": n, "sha256": h.hexdigest(),
                         "vmhwm_kib": int(status["VmHWM"].split()[0])})

async def state(request):
    return JSONResponse({"greeting": request.state.greeting, "root_path": request.scope["root_path"],
                         "client": list(request.client), "asgi": request.scope["asgi"],
                         "raw_path": request.scope["raw_path"].decode(),
                         "query_string": request.scope["query_string"].decode()})

async def echo(ws):
    await ws.accept(subprotocol="echo.v1")
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") == "bye":
            await ws.close(code=4001, reason="see you")
            return
        if msg.get("text") is not None:
            await ws.send_text("echo: " + msg["text"])
        else:
            await ws.send_bytes(msg["bytes"][::-1])

async def deny(ws):
    await ws.close(code=4403)

@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan"}

app = Starlette(routes=[
    Route("/chunks", chunks), Route("/release", do_release), Route("/upload", upload, methods=["POST"]),
    Route("/state", state), WebSocketRoute("/ws", echo), WebSocketRoute("/deny", deny),
], lifespan=lifespan)
`

func startStarlette(t *testing.T) *guest {
	requirePythonModules(t, "starlette")
	code := writeApp(t, map[string]string{"main.py": starletteApp})
	d := startDevInit(t)
	d.mustConfigure(t, asgiConfig(code, "main:app", 1))
	return d
}

// A StreamingResponse of 1,000 chunks arrives as a stream: the first chunk
// is read while the app still holds back the last.
func TestStreamingResponseArrivesChunkByChunk(t *testing.T) {
	d := startStarlette(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := d.sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/chunks")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil || rh.Status != 200 {
		t.Fatalf("response %+v %v", rh, err)
	}
	first := make([]byte, 11)
	if _, err := io.ReadFull(st, first); err != nil || string(first) != "chunk 0000\n" {
		t.Fatalf("first chunk %q %v", first, err)
	}
	// The app is now parked before its last chunk; release it.
	r, err := request(ctx, d.sess, "GET", "/release", nil, nil)
	if err != nil || r.status != 200 {
		t.Fatalf("release: %v %v", r, err)
	}
	rest, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	all := append(first, rest...)
	lines := strings.Split(strings.TrimSuffix(string(all), "\n"), "\n")
	if len(lines) != 1000 || lines[999] != "chunk 0999" || lines[500] != "chunk 0500" {
		t.Fatalf("got %d lines, last %q", len(lines), lines[len(lines)-1])
	}
}

// A 100 MiB upload streams through init to the app with flow control: the
// worker's peak memory stays far below the body's size.
func TestLargeUploadKeepsWorkerMemoryBounded(t *testing.T) {
	d := startStarlette(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := d.sess.Open(ctx, &message.RequestHead{Method: []byte("POST"), Path: []byte("/upload")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	const size = 100 << 20
	h := sha256.New()
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for sent := 0; sent < size; sent += len(chunk) {
		chunk[0] = byte(sent >> 16)
		h.Write(chunk)
		if _, err := st.Write(chunk); err != nil {
			t.Fatalf("upload after %d bytes: %v", sent, err)
		}
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(st)
	var got struct {
		Bytes    int    `json:"bytes"`
		SHA256   string `json:"sha256"`
		VmHWMKiB int    `json:"vmhwm_kib"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%d %s", rh.Status, body)
	}
	if got.Bytes != size || got.SHA256 != hex.EncodeToString(h.Sum(nil)) {
		t.Fatalf("app received %d bytes, sha256 %s", got.Bytes, got.SHA256)
	}
	t.Logf("worker peak RSS (VmHWM) after a 100 MiB upload: %d KiB", got.VmHWMKiB)
	if got.VmHWMKiB > 64<<10 {
		t.Fatalf("worker peak RSS %d KiB: the upload was buffered", got.VmHWMKiB)
	}
}

// Lifespan state reaches requests, with the scope's other fields.
func TestLifespanStateAndScope(t *testing.T) {
	d := startStarlette(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := request(ctx, d.sess, "GET", "/state?x=1&y=%20", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := jsonBody(t, r)
	asgi, _ := got["asgi"].(map[string]any)
	if got["greeting"] != "hello from lifespan" || got["query_string"] != "x=1&y=%20" || got["raw_path"] != "/state" ||
		asgi["version"] != "3.0" || got["client"].([]any)[0] != "127.0.0.1" {
		t.Fatalf("scope seen by the app: %v", got)
	}
}

// A websocket echoes text and binary messages and ends with the app's
// close code; a websocket closed before accept is a denial.
func TestWebSocketEchoAndClose(t *testing.T) {
	d := startStarlette(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(path string) *mux.Stream {
		st, err := d.sess.Open(ctx, &message.RequestHead{Kind: message.KindWebSocket, HTTPVersion: []byte("1.1"), Scheme: []byte("ws"),
			Path: []byte(path), RawPath: []byte(path), Subprotocols: [][]byte{[]byte("echo.v1")}}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open("/ws")
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil || rh.Status != 101 || string(rh.Subprotocol) != "echo.v1" {
		t.Fatalf("accept: %+v %v", rh, err)
	}
	if err := st.WriteMessage(true, []byte("héllo")); err != nil {
		t.Fatal(err)
	}
	if text, msg, err := st.ReadMessage(1 << 20); err != nil || !text || string(msg) != "echo: héllo" {
		t.Fatalf("text echo: %v %q %v", text, msg, err)
	}
	big := make([]byte, 200<<10) // several frames, more than one window
	for i := range big {
		big[i] = byte(i)
	}
	if err := st.WriteMessage(false, big); err != nil {
		t.Fatal(err)
	}
	text, msg, err := st.ReadMessage(1 << 20)
	if err != nil || text || len(msg) != len(big) || msg[0] != big[len(big)-1] || msg[len(msg)-1] != big[0] {
		t.Fatalf("binary echo: text=%v len=%d %v", text, len(msg), err)
	}
	if err := st.WriteMessage(true, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	var closed *mux.WSCloseError
	if _, _, err := st.ReadMessage(1 << 20); !errors.As(err, &closed) || closed.Code != 4001 || closed.Reason != "see you" {
		t.Fatalf("close: %v", err)
	}
	st.CloseWebSocket(4001, "")

	denied := open("/deny")
	if err := denied.ReadResponse(ctx, &rh); !errors.As(err, &closed) || closed.Code != 4403 {
		t.Fatalf("denial: %+v %v", rh, err)
	}
}

// A Django project served through its ASGI application.
func TestDjangoASGIView(t *testing.T) {
	requirePythonModules(t, "django")
	code := writeApp(t, map[string]string{
		"mysite/__init__.py": "",
		"mysite/settings.py": `
SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
`,
		"mysite/urls.py": `
from django.http import JsonResponse
from django.urls import path

async def hello(request, name):
    return JsonResponse({"hello": name, "method": request.method, "q": request.GET.get("q")})

urlpatterns = [path("hello/<str:name>", hello)]
`,
		"mysite/asgi.py": `
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
from django.core.asgi import get_asgi_application
application = get_asgi_application()
`,
	})
	d := startDevInit(t)
	d.mustConfigure(t, asgiConfig(code, "mysite.asgi:application", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := request(ctx, d.sess, "GET", "/hello/ferry?q=django", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonBody(t, r); r.status != 200 || got["hello"] != "ferry" || got["q"] != "django" || got["method"] != "GET" {
		t.Fatalf("Django answered %d %v", r.status, got)
	}
	if r, err := request(ctx, d.sess, "GET", "/nowhere", nil, nil); err != nil || r.status != 404 {
		t.Fatalf("unknown path answered %v %v", r, err)
	}
}

// An app that fails to import, and one whose lifespan startup fails, are
// structured configuration errors carrying the traceback; init stays up.
func TestAppStartFailuresAreStructuredErrors(t *testing.T) {
	requirePythonModules(t, "starlette")
	cases := []struct {
		name, source, phase, message, inDetail string
	}{
		{"import error", "import json\nimport no_such_module_xyz\napp = None\n", "app",
			"cannot import main: ModuleNotFoundError", "no_such_module_xyz"},
		{"syntax error", "def broken(:\n", "app", "cannot import main: SyntaxError", "Traceback"},
		{"missing attribute", "x = 1\n", "app", "module main has no attribute app", ""},
		{"startup failure", `
import contextlib
from starlette.applications import Starlette

@contextlib.asynccontextmanager
async def lifespan(app):
    raise RuntimeError("database unreachable")
    yield

app = Starlette(lifespan=lifespan)
`, "lifespan", "lifespan startup failed", "database unreachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code := writeApp(t, map[string]string{"main.py": c.source})
			d := startDevInit(t)
			r := d.configure(t, asgiConfig(code, "main:app", 2))
			if r.OK || string(r.Phase) != c.phase || string(r.Field) != "entrypoint" || !strings.Contains(string(r.Message), c.message) {
				t.Fatalf("result: ok=%v phase=%q field=%q message=%q", r.OK, r.Phase, r.Field, r.Message)
			}
			if !strings.Contains(string(r.Detail), c.inDetail) || (c.inDetail != "" && !strings.Contains(string(r.Detail), "Traceback")) {
				t.Fatalf("detail lacks the traceback (%q):\n%s", c.inDetail, r.Detail)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := d.sess.Ping(ctx); err != nil {
				t.Fatalf("init stopped answering: %v", err)
			}
		})
	}
}

// An exception in a request before the response started is a plain 500
// for the client; the traceback goes to the program's logs (LOG frames).
func TestRequestExceptionIsA500WithoutTraceback(t *testing.T) {
	requirePythonModules(t, "fastapi")
	code := writeApp(t, map[string]string{"main.py": `
from fastapi import FastAPI
app = FastAPI()

@app.get("/boom")
async def boom():
    print("about to fail")
    raise ValueError("secret internal detail")
`})
	d := startDevInit(t)
	d.mustConfigure(t, asgiConfig(code, "main:app", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := request(ctx, d.sess, "GET", "/boom", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != 500 || strings.Contains(string(r.body), "secret") || strings.Contains(string(r.body), "Traceback") {
		t.Fatalf("client got %d %q", r.status, r.body)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		logs := strings.Join(d.logLines(), "\n")
		if strings.Contains(logs, "stdout[1] about to fail") && strings.Contains(logs, "ValueError: secret internal detail") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("program output did not arrive as LOG frames:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const poolApp = `
import asyncio, os
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def work(request):
    i = int(request.path_params["i"])
    await asyncio.sleep(float(request.query_params.get("sleep", "0.01")))
    return JSONResponse({"i": i, "pid": os.getpid()})

app = Starlette(routes=[Route("/work/{i}", work)])
`

// 500 concurrent requests over one connection to 2 workers all come back
// right; killing one worker mid-run resets only its streams, and the pool
// replaces it.
func TestWorkerPoolConcurrencyAndCrashRecovery(t *testing.T) {
	requirePythonModules(t, "starlette")
	code := writeApp(t, map[string]string{"main.py": poolApp})
	d := startDevInit(t)
	d.mustConfigure(t, asgiConfig(code, "main:app", 2))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type outcome struct {
		i, pid, code int
		err          error
	}
	batch := func(n int, sleep string) []outcome {
		out := make([]outcome, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := request(ctx, d.sess, "GET", fmt.Sprintf("/work/%d?sleep=%s", i, sleep), nil, nil)
				out[i] = outcome{i: i, err: err, code: streamErrorCode(err)}
				if err == nil {
					var got struct{ I, Pid int }
					if json.Unmarshal(r.body, &got) != nil || r.status != 200 || got.I != i {
						out[i].err = fmt.Errorf("request %d answered %d %s", i, r.status, r.body)
						return
					}
					out[i].pid = got.Pid
				}
			}()
		}
		wg.Wait()
		return out
	}

	pids := map[int]int{}
	for _, o := range batch(500, "0.01") {
		if o.err != nil {
			t.Fatal(o.err)
		}
		pids[o.pid]++
	}
	if len(pids) != 2 {
		t.Fatalf("500 requests were served by %d workers: %v", len(pids), pids)
	}
	t.Logf("500 concurrent requests, per worker: %v", pids)
	var victim, survivor int
	for pid := range pids {
		if victim == 0 {
			victim = pid
		} else {
			survivor = pid
		}
	}

	// 100 slow requests in flight on both workers; kill one worker.
	results := make(chan []outcome, 1)
	go func() { results <- batch(100, "2") }()
	time.Sleep(time.Second)
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ok, lost int
	for _, o := range <-results {
		switch {
		case o.err == nil && o.pid == survivor:
			ok++
		case o.code == int(frame.CodeWorkerLost):
			lost++
			if !strings.Contains(o.err.Error(), "killed") {
				t.Errorf("reset does not say why: %v", o.err)
			}
		default:
			t.Errorf("request %d: pid %d, err %v", o.i, o.pid, o.err)
		}
	}
	t.Logf("after killing worker pid %d: %d requests answered by the survivor, %d reset with WORKER_LOST", victim, ok, lost)
	if ok == 0 || lost == 0 || ok+lost != 100 {
		t.Fatalf("ok %d, lost %d", ok, lost)
	}

	// The pool recovers: a new worker process serves requests again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen := map[int]bool{}
		failed := 0
		for _, o := range batch(50, "0.05") {
			if o.err != nil {
				failed++
				continue
			}
			seen[o.pid] = true
		}
		if failed == 0 && len(seen) == 2 && !seen[victim] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool did not recover: workers %v, %d failures", seen, failed)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// An ASGI 2 double callable behind an attribute path, importing from the
// packages directory; a client that leaves is an http.disconnect for the app.
func TestASGI2AppPackagesAndDisconnect(t *testing.T) {
	requirePythonModules(t, "asyncio")
	packages := writeApp(t, map[string]string{"greetings.py": "WORD = 'bonjour'\n"})
	code := writeApp(t, map[string]string{"main.py": `
import asyncio, os, greetings

class ASGI2:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] != "http":
            return
        if self.scope["path"] == "/wait":
            while True:   # never answers: waits for the client to leave
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    with open(os.environ["MARKER"], "w") as f:
                        f.write("disconnected")
                    return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": greetings.WORD.encode()})

class Holder:
    app = ASGI2

holder = Holder()
`})
	marker := filepath.Join(t.TempDir(), "disconnected")
	cfg := asgiConfig(code, "main:holder.app", 1)
	cfg["packages"] = packages
	cfg["env"] = map[string]any{"MARKER": marker}
	d := startDevInit(t)
	d.mustConfigure(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := request(ctx, d.sess, "GET", "/", nil, nil)
	if err != nil || r.status != 200 || string(r.body) != "bonjour" {
		t.Fatalf("ASGI 2 app answered %+v %v", r, err)
	}
	st, err := d.sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/wait")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // let the app reach receive()
	st.Reset(frame.CodeCancel, "client went away")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(marker); err == nil && string(b) == "disconnected" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the app never saw http.disconnect")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
