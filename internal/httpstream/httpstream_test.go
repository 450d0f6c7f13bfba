package httpstream

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// A request's head, carried over a stream, becomes the same request on
// the other side: method, target, headers (hop-by-hop ones dropped), the
// body; and a response's header becomes a head without hop-by-hop fields.
func TestRequestCrossesAStream(t *testing.T) {
	a, b := net.Pipe()
	got := make(chan *http.Request, 1)
	bodies := make(chan string, 1)
	client := mux.Client(a, mux.Config{})
	server := mux.Server(b, mux.Config{Handler: func(st *mux.Stream) {
		var head message.RequestHead
		if err := st.RequestHead(&head); err != nil {
			t.Error(err)
			return
		}
		req, upgrade, err := NewRequest(context.Background(), &head, st)
		if err != nil || upgrade {
			t.Error(err, upgrade)
			return
		}
		body, _ := io.ReadAll(req.Body)
		got <- req
		bodies <- string(body)
		st.WriteResponse(&message.ResponseHead{Status: 204}, nil, true)
	}})
	defer client.Close()
	defer server.Close()

	r := httptest.NewRequest("POST", "http://api.local/v1/kv/a%2Fb?ttl=3", strings.NewReader("value"))
	r.Header.Set("X-Key", "1")
	r.Header.Set("Keep-Alive", "timeout=5")
	r.RemoteAddr = "127.0.0.1:40000"
	head := RequestHead(r, "/v1/kv/a/b", "/v1/kv/a%2Fb", "")
	if string(head.ClientHost) != "127.0.0.1" || head.ClientPort != 40000 || string(head.QueryString) != "ttl=3" {
		t.Errorf("head %+v", head)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := client.Open(ctx, head, []byte("value"), true)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil || rh.Status != 204 {
		t.Fatal(rh.Status, err)
	}
	req := <-got
	if req.Method != "POST" || req.URL.EscapedPath() != "/v1/kv/a%2Fb" || req.URL.Path != "/v1/kv/a/b" || req.URL.RawQuery != "ttl=3" ||
		req.Host != "api.local" || req.Header.Get("X-Key") != "1" || req.Header.Get("Keep-Alive") != "" {
		t.Errorf("request %s %s host %s %v", req.Method, req.URL, req.Host, req.Header)
	}
	if body := <-bodies; body != "value" {
		t.Errorf("body %q", body)
	}

	resp := ResponseHead(200, http.Header{"Content-Type": {"text/plain"}, "Connection": {"close"}, "Upgrade": {"x"}}, false)
	if len(resp.Headers) != 1 || string(resp.Headers[0].Name) != "content-type" {
		t.Errorf("response head %v", resp.Headers)
	}
	if sw := ResponseHead(101, http.Header{"Connection": {"upgrade"}, "Upgrade": {"websocket"}}, true); len(sw.Headers) != 2 {
		t.Errorf("switching protocols keeps Connection and Upgrade: %v", sw.Headers)
	}
}

// Hop-by-hop is RFC 9110's: the fixed set and what Connection lists. A
// 426 keeps its Upgrade, a 407 its Proxy-Authenticate, a request its
// Proxy-Authorization; a field Connection names is dropped both ways.
func TestHopByHopFields(t *testing.T) {
	fields := func(rh message.ResponseHead) string {
		var out []string
		for _, f := range rh.Headers {
			out = append(out, string(f.Name)+"="+string(f.Value))
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		status int
		header http.Header
		want   string
	}{
		{426, http.Header{"Upgrade": {"TLS/1.2"}, "Connection": {"Upgrade"}}, "upgrade=TLS/1.2"},
		{407, http.Header{"Proxy-Authenticate": {"Basic"}, "Keep-Alive": {"timeout=5"}}, "proxy-authenticate=Basic"},
		{200, http.Header{"Connection": {"X-Private, close"}, "X-Private": {"1"}, "X-Public": {"2"}, "Trailer": {"X-T"}}, "trailer=X-T x-public=2"},
	} {
		if got := fields(ResponseHead(c.status, c.header, false)); got != c.want {
			t.Errorf("%d %v: %q, want %q", c.status, c.header, got, c.want)
		}
	}

	head := &message.RequestHead{Method: []byte("GET"), RawPath: []byte("/"), Headers: []message.HeaderField{
		{Name: []byte("connection"), Value: []byte("X-Private")}, {Name: []byte("x-private"), Value: []byte("1")},
		{Name: []byte("proxy-authorization"), Value: []byte("Basic x")}, {Name: []byte("te"), Value: []byte("trailers")},
		{Name: []byte("keep-alive"), Value: []byte("timeout=5")}, {Name: []byte("content-length"), Value: []byte("0")},
	}}
	req, upgrade, err := NewRequest(context.Background(), head, nil)
	if err != nil || upgrade {
		t.Fatal(err, upgrade)
	}
	want := http.Header{"Proxy-Authorization": {"Basic x"}, "Te": {"trailers"}}
	if fmt.Sprint(req.Header) != fmt.Sprint(want) {
		t.Errorf("request header %v, want %v", req.Header, want)
	}
}

// The app sees the request's header fields as the client sent them, as
// under uvicorn: no host invented for an HTTP/1.0 request without one (an
// HTTP/1.1 request's empty Host is kept), and the framing fields net/http
// moves out of the header, transfer-encoding and trailer, put back.
func TestRequestHeadHeadersAsSent(t *testing.T) {
	fields := func(h *message.RequestHead) string {
		var out []string
		for _, f := range h.Headers {
			out = append(out, string(f.Name)+"="+string(f.Value))
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Proto, r.ProtoMajor, r.ProtoMinor, r.Host = "HTTP/1.0", 1, 0, ""
	r.Header = http.Header{"Accept": {"*/*"}}
	if got := fields(RequestHead(r, "/", "/", "")); got != "accept=*/*" {
		t.Errorf("HTTP/1.0 without Host: %q", got)
	}
	r.ProtoMinor = 1
	if got := fields(RequestHead(r, "/", "/", "")); got != "accept=*/* host=" {
		t.Errorf("HTTP/1.1 with an empty Host: %q", got)
	}
	r.Host, r.TransferEncoding = "h", []string{"chunked"}
	r.Trailer = http.Header{"X-Sum": nil, "Expires": nil}
	if got := fields(RequestHead(r, "/", "/", "")); got != "accept=*/* host=h trailer=expires, x-sum transfer-encoding=chunked" {
		t.Errorf("chunked with trailers: %q", got)
	}
}

// StreamContext ends when the stream is reset, not when it ends well.
func TestStreamContext(t *testing.T) {
	a, b := net.Pipe()
	reset := make(chan error, 1)
	client := mux.Client(a, mux.Config{})
	server := mux.Server(b, mux.Config{Handler: func(st *mux.Stream) {
		ctx, cancel := StreamContext(context.Background(), st)
		defer cancel()
		<-ctx.Done()
		reset <- st.Err()
	}})
	defer client.Close()
	defer server.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := client.Open(ctx, &message.RequestHead{Method: []byte("GET")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	st.Reset(frame.CodeCancel, "gone")
	select {
	case err := <-reset:
		if err == nil {
			t.Error("the context ended without a reset")
		}
	case <-ctx.Done():
		t.Fatal("the stream's context did not end on its reset")
	}
}

// TestRequestHeadFields checks every field RequestHead fills in, the
// server's address from a TCP listener (IPv6 with a zone too) and from
// another kind of address, and header names in lower case with every
// value kept.
func TestRequestHeadFields(t *testing.T) {
	for _, tc := range []struct {
		local      net.Addr
		host, port string
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 8080}, "10.0.0.7", "8080"},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 443, Zone: "eth0"}, "fe80::1%eth0", "443"},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, "", "0"},
	} {
		r := httptest.NewRequest("GET", "http://app.example/a%20b?q=1", nil)
		r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, tc.local))
		r.RemoteAddr = "[2001:db8::2]:5555"
		r.Header = http.Header{"X-Many": {"1", "2"}, "content-TYPE": {"text/plain"}}
		h := RequestHead(r, "/a b", "/a%20b", "/vm/app")
		got := fmt.Sprintf("%s %s %s %s %s %s %s %s:%d %s:%d", h.HTTPVersion, h.Method, h.Scheme, h.Path, h.RawPath, h.QueryString, h.RootPath,
			h.ClientHost, h.ClientPort, h.ServerHost, h.ServerPort)
		want := "1.1 GET http /a b /a%20b q=1 /vm/app 2001:db8::2:5555 " + tc.host + ":" + tc.port
		if got != want {
			t.Errorf("head %q, want %q", got, want)
		}
		var fields []string
		for _, f := range h.Headers {
			fields = append(fields, string(f.Name)+"="+string(f.Value))
		}
		sort.Strings(fields)
		if got, want := strings.Join(fields, " "), "content-type=text/plain host=app.example x-many=1 x-many=2"; got != want {
			t.Errorf("headers %q, want %q", got, want)
		}
	}
}

// BenchmarkRequestHead builds the head of a browser-like request.
func BenchmarkRequestHead(b *testing.B) {
	r := httptest.NewRequest("GET", "http://app.example/items/42?full=1", nil)
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}))
	r.Header = http.Header{"User-Agent": {"Mozilla/5.0"}, "Accept": {"*/*"}, "Accept-Encoding": {"gzip, deflate"}, "Cookie": {"a=1; b=2"}}
	b.ReportAllocs()
	for b.Loop() {
		RequestHead(r, "/items/42", "/items/42", "")
	}
}
