package relay

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"

	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// benchWriter is the least http.ResponseWriter: it keeps the status and
// counts the body, so that a benchmark of Serve counts Serve's work and
// not a recorder's.
type benchWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) WriteHeader(status int)      { w.status = status }
func (w *benchWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// benchSessions returns a host session and a guest session over a real
// unix socket pair, the guest answering every request with "hello" and
// a content-type, as a hello-world ASGI app does.
func benchSessions(b *testing.B) *mux.Session {
	conns := unixPair(b)
	rh := &message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte("content-type"), Value: []byte("text/plain")}}}
	guest := mux.Server(conns[1], mux.Config{KeepaliveInterval: -1, Handler: func(st *mux.Stream) {
		st.WriteResponse(rh, []byte("hello"), true)
	}})
	host := mux.Client(conns[0], mux.Config{KeepaliveInterval: -1})
	b.Cleanup(func() {
		host.Close()
		guest.Close()
	})
	return host
}

// unixPair returns the two ends of a connected unix stream socket pair
// (a real socket, as between the agent and init).
func unixPair(tb testing.TB) [2]net.Conn {
	tb.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			tb.Fatal(err)
		}
	}
	return conns
}

// benchRequest is a browser-like GET as net/http hands it to a handler.
func benchRequest() *http.Request {
	r, _ := http.NewRequest("GET", "http://app.example/items/42?full=1", nil)
	r.RemoteAddr = "127.0.0.1:40000"
	r.Header = http.Header{"User-Agent": {"Mozilla/5.0 (X11; Linux x86_64)"}, "Accept": {"*/*"},
		"Accept-Encoding": {"gzip, deflate"}, "Cookie": {"session=abc"}}
	return r.WithContext(context.WithValue(context.Background(), http.LocalAddrContextKey,
		&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}))
}

// BenchmarkServeHello is the agent's own work for one request, without
// net/http or the program: Serve builds the head, opens a stream on a
// session over a unix socket, reads the answer of an in-process Go peer
// (which answers at once) and writes it to a ResponseWriter that keeps
// nothing. allocs/op counts both sides of the session.
//
//	go test -run '^$' -bench ServeHello -benchmem ./host/relay/
func BenchmarkServeHello(b *testing.B) {
	host := benchSessions(b)
	r := benchRequest()
	log := slog.New(slog.DiscardHandler)
	b.ReportAllocs()
	for b.Loop() {
		w := &benchWriter{h: http.Header{}}
		Serve(w, r, &Exchange{Session: host, Path: "/items/42", RawPath: "/items/42", Log: log, ID: NewRequestID()})
		if w.status != 200 || w.n != 5 {
			b.Fatalf("status %d, %d bytes", w.status, w.n)
		}
	}
}

// BenchmarkServeHelloParallel is BenchmarkServeHello with 16 x GOMAXPROCS
// requests at once on one session: frames of many streams share each
// read and write.
func BenchmarkServeHelloParallel(b *testing.B) {
	host := benchSessions(b)
	log := slog.New(slog.DiscardHandler)
	b.SetParallelism(16)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := benchRequest()
		for pb.Next() {
			w := &benchWriter{h: http.Header{}}
			Serve(w, r, &Exchange{Session: host, Path: "/items/42", RawPath: "/items/42", Log: log, ID: NewRequestID()})
			if w.status != 200 || w.n != 5 {
				b.Errorf("status %d, %d bytes", w.status, w.n)
				return
			}
		}
	})
}
