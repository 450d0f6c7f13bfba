package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ferry-vm/ferry/host/backend/sandbox"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
)

const plainHelloApp = `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
`

// startRelayBench serves plainHelloApp through the agent's router (the
// program at /, as host-agent run serves it), a session and a real init
// (sandbox backend) with one ASGI worker, and returns the server's URL
// and a keep-alive client with room for conns idle connections. The
// program is booted before it returns.
func startRelayBench(b *testing.B, conns int) (string, *http.Client) {
	requirePythonModules(b, "asyncio")
	initBin, err := buildInit()
	if err != nil {
		b.Fatal(err)
	}
	code := writeApp(b, map[string]string{"main.py": plainHelloApp})
	mgr := lifecycle.New(lifecycle.Options{Backend: sandbox.New(nil), InitPath: initBin, IdleTimeout: -1})
	b.Cleanup(mgr.Close)
	programs := front.NewPrograms(mgr)
	workers := 1
	if err := programs.Deploy("bench", &manifest.Program{Code: manifest.Code{Interface: "asgi", Entrypoint: "main:app", Path: code},
		Resources: manifest.Resources{Workers: &workers}, Runtime: &manifest.Runtime{Python: debianPython}, On: manifest.On{HTTP: true}}); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(&front.Router{Programs: programs, Manager: mgr, MaxBody: 1 << 20, Root: "bench"})
	b.Cleanup(func() { mgr.StopAll(context.Background()) })
	b.Cleanup(srv.Close)
	transport := srv.Client().Transport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = conns
	client := &http.Client{Transport: transport}
	if err := getHello(client, srv.URL); err != nil { // boots the program
		b.Fatal(err)
	}
	return srv.URL, client
}

// getHello makes one request and checks its answer.
func getHello(client *http.Client, url string) error {
	resp, err := client.Get(url + "/")
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello" {
		return fmt.Errorf("status %d body %q", resp.StatusCode, body)
	}
	return nil
}

// BenchmarkRelayASGIHello is one request through the whole hot path: Go's
// HTTP client (keep-alive) -> the agent's handler and relay -> the mux
// session -> init (a real process, started by the sandbox backend) -> a
// Python ASGI worker and back. The client, the agent and the session run
// in this process, so allocs/op counts the host side; init and the worker
// are other processes.
//
//	go test -run '^$' -bench RelayASGIHello -benchmem ./tests/
func BenchmarkRelayASGIHello(b *testing.B) {
	url, client := startRelayBench(b, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := getHello(client, url); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRelayASGIHelloParallel is BenchmarkRelayASGIHello with 16 x
// GOMAXPROCS concurrent keep-alive clients: the throughput case, where
// frames of many streams share each read and write.
func BenchmarkRelayASGIHelloParallel(b *testing.B) {
	url, client := startRelayBench(b, 64)
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := getHello(client, url); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
