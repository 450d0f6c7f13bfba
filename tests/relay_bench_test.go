package tests

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ferry-vm/ferry/host/agent"
	"github.com/ferry-vm/ferry/host/backend/sandbox"
	"github.com/ferry-vm/ferry/host/lifecycle"
)

const plainHelloApp = `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
`

// BenchmarkRelayASGIHello is one request through the whole hot path: Go's
// HTTP client (keep-alive) -> the agent's handler and relay -> the mux
// session -> init (a real process, started by the sandbox backend) -> a
// Python ASGI worker and back. The client, the agent and the session run
// in this process, so allocs/op counts the host side; init and the worker
// are other processes.
//
//	go test -run '^$' -bench RelayASGIHello -benchmem ./tests/
func BenchmarkRelayASGIHello(b *testing.B) {
	requirePythonModules(b, "asyncio")
	initBin, err := buildInit()
	if err != nil {
		b.Fatal(err)
	}
	code := writeApp(b, map[string]string{"main.py": plainHelloApp})
	mgr := lifecycle.New(lifecycle.Options{Backend: sandbox.New(nil), InitPath: initBin, IdleTimeout: -1})
	defer mgr.Close()
	prog := &lifecycle.Program{ID: "bench", Interface: "asgi", Entrypoint: "main:app", CodeDir: code, Workers: 1, Python: debianPython}
	srv := httptest.NewServer(&agent.Single{Manager: mgr, Program: prog, MaxBody: 1 << 20})
	defer srv.Close()
	defer mgr.StopAll(b.Context())
	client := srv.Client()
	get := func() {
		resp, err := client.Get(srv.URL + "/")
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "hello" {
			b.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	}
	get() // boots the program
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		get()
	}
}

// BenchmarkRelayASGIHelloParallel is BenchmarkRelayASGIHello with many
// concurrent keep-alive clients (GOMAXPROCS x -cpu... goroutines, see
// RunParallel): the throughput case, where frames of many streams share
// each read and write.
func BenchmarkRelayASGIHelloParallel(b *testing.B) {
	requirePythonModules(b, "asyncio")
	initBin, err := buildInit()
	if err != nil {
		b.Fatal(err)
	}
	code := writeApp(b, map[string]string{"main.py": plainHelloApp})
	mgr := lifecycle.New(lifecycle.Options{Backend: sandbox.New(nil), InitPath: initBin, IdleTimeout: -1})
	defer mgr.Close()
	prog := &lifecycle.Program{ID: "bench", Interface: "asgi", Entrypoint: "main:app", CodeDir: code, Workers: 1, Python: debianPython}
	srv := httptest.NewServer(&agent.Single{Manager: mgr, Program: prog, MaxBody: 1 << 20})
	defer srv.Close()
	defer mgr.StopAll(b.Context())
	transport := srv.Client().Transport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 64
	client := &http.Client{Transport: transport}
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(srv.URL + "/")
			if err != nil {
				b.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != "hello" {
				b.Errorf("status %d body %q", resp.StatusCode, body)
				return
			}
		}
	})
}
