package relay

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// HTTP fidelity (issue 18): the program sees the request as the client
// sent it and the client gets the response as the program sent it, as
// under uvicorn. Requests are written byte for byte on a raw connection.

// rawRequest writes raw on a new connection to the fixture (closed with
// the test) and returns the response, its body, and the connection and
// its reader after them.
func rawRequest(t *testing.T, url, raw string) (*http.Response, string, *bufio.Reader, net.Conn) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%q: body: %v", raw, err)
	}
	resp.Body.Close()
	return resp, string(body), br, conn
}

// headRecorder is a program that answers 204 and passes on each REQUEST
// head it gets, after reading the body.
func headRecorder(heads chan<- *message.RequestHead) func(*mux.Stream) {
	return func(st *mux.Stream) {
		var h message.RequestHead
		st.RequestHead(&h)
		io.Copy(io.Discard, st)
		heads <- &h
		st.WriteResponse(&message.ResponseHead{Status: 204}, nil, true)
	}
}

// headerList is a head's header list as "name=value" in order.
func headerList(h *message.RequestHead) []string {
	var out []string
	for _, f := range h.Headers {
		out = append(out, string(f.Name)+"="+string(f.Value))
	}
	return out
}

// raw_path is the target's path byte for byte, not net/http's
// re-encoding; an absolute-form target gives its path; OPTIONS * reaches
// the program with path and raw_path "*" (net/http would answer it).
func TestServeRawPathAsSent(t *testing.T) {
	heads := make(chan *message.RequestHead, 1)
	f := newRelayFixture(t, headRecorder(heads))
	for _, c := range []struct {
		target, path, rawPath, query string
	}{
		{"/a%41/{x}/%7By%7D/\"<|^`>?q=%20", "/aA/{x}/{y}/\"<|^`>", "/a%41/{x}/%7By%7D/\"<|^`>", "q=%20"},
		{"/p#frag?x", "/p", "/p", ""},
		{"/p%23?x#frag", "/p#", "/p%23", "x"},
		{"/p%2Fq%2f", "/p/q/", "/p%2Fq%2f", ""},
		{"http://other.example/abs%20path?x=1", "/abs path", "/abs%20path", "x=1"},
	} {
		rawRequest(t, f.url, "GET "+c.target+" HTTP/1.1\r\nHost: h\r\n\r\n")
		h := <-heads
		if string(h.Path) != c.path || string(h.RawPath) != c.rawPath || string(h.QueryString) != c.query {
			t.Errorf("%q: path %q raw %q query %q, want %q %q %q", c.target, h.Path, h.RawPath, h.QueryString, c.path, c.rawPath, c.query)
		}
	}
	resp, _, _, _ := rawRequest(t, f.url, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
	h := <-heads
	if resp.StatusCode != 204 || string(h.Method) != "OPTIONS" || string(h.Path) != "*" || string(h.RawPath) != "*" {
		t.Errorf("OPTIONS *: %d, program saw %s %q %q", resp.StatusCode, h.Method, h.Path, h.RawPath)
	}
}

// An HTTP/1.0 request without Host gets no host field; a chunked body's
// framing fields (transfer-encoding, trailer) reach the program.
func TestServeHeadersAsSent(t *testing.T) {
	heads := make(chan *message.RequestHead, 1)
	f := newRelayFixture(t, headRecorder(heads))
	rawRequest(t, f.url, "GET / HTTP/1.0\r\nX-A: 1\r\n\r\n")
	if got := strings.Join(headerList(<-heads), " "); got != "x-a=1" {
		t.Errorf("HTTP/1.0 without Host: headers %q", got)
	}
	rawRequest(t, f.url, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
		"3;ext=1\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n")
	got := map[string]string{}
	for _, f := range (<-heads).Headers {
		got[string(f.Name)] = string(f.Value)
	}
	if got["transfer-encoding"] != "chunked" || got["trailer"] != "x-sum" || got["host"] != "h" {
		t.Errorf("chunked request: headers %v", got)
	}
}

// The program's response fields reach the client: Upgrade on a 426,
// Proxy-Authenticate on a 407; a Connection: close closes the client's
// connection after the response, and says so.
func TestServeResponseFieldsAsSent(t *testing.T) {
	field := func(name, value string) message.HeaderField {
		return message.HeaderField{Name: []byte(name), Value: []byte(value)}
	}
	f := newRelayFixture(t, func(st *mux.Stream) {
		var h message.RequestHead
		st.RequestHead(&h)
		io.Copy(io.Discard, st)
		var rh message.ResponseHead
		switch string(h.Path) {
		case "/426":
			rh = message.ResponseHead{Status: 426, Headers: []message.HeaderField{field("upgrade", "TLS/1.3"), field("connection", "Upgrade")}}
		case "/407":
			rh = message.ResponseHead{Status: 407, Headers: []message.HeaderField{field("proxy-authenticate", `Basic realm="x"`)}}
		case "/close":
			rh = message.ResponseHead{Status: 200, Headers: []message.HeaderField{field("connection", "close")}}
		}
		st.WriteResponse(&rh, []byte("body"), true)
	})
	resp, _, _, _ := rawRequest(t, f.url, "GET /426 HTTP/1.1\r\nHost: h\r\n\r\n")
	if resp.StatusCode != 426 || resp.Header.Get("Upgrade") != "TLS/1.3" || resp.Header.Get("Connection") != "Upgrade" {
		t.Errorf("426: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _, _, _ = rawRequest(t, f.url, "GET /407 HTTP/1.1\r\nHost: h\r\n\r\n")
	if resp.StatusCode != 407 || resp.Header.Get("Proxy-Authenticate") != `Basic realm="x"` {
		t.Errorf("407: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _, br, _ := rawRequest(t, f.url, "GET /close HTTP/1.1\r\nHost: h\r\n\r\n")
	if resp.StatusCode != 200 || !resp.Close { // (ReadResponse takes Connection: close out of the header)
		t.Errorf("Connection: close: %d %v", resp.StatusCode, resp.Header)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("after the app's Connection: close the connection stays open (read %d, %v)", n, err)
	}
}

// An invalid websocket handshake is refused as uvicorn refuses it (400,
// or 426 for a bad Upgrade, with the websockets library's reason and
// Connection: close) before the program hears of it; a valid one reaches
// the program and is opened, over HTTP/1.0 too.
func TestServeWebSocketChecksTheHandshake(t *testing.T) {
	wsURL, streams := wsProgram(t)
	url := "http://" + strings.TrimPrefix(wsURL, "ws://")
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	for _, c := range []struct {
		name, method, fields string
		status               int
		reason               string
	}{
		{"no key", "GET", "Sec-WebSocket-Version: 13\r\n", 400, "missing Sec-WebSocket-Key header"},
		{"two keys", "GET", "Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n", 400,
			"invalid Sec-WebSocket-Key header: more than one Sec-WebSocket-Key header found"},
		{"short key", "GET", "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n", 400, "invalid Sec-WebSocket-Key header: c2hvcnQ="},
		{"key not base64", "GET", "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\nSec-WebSocket-Version: 13\r\n", 400,
			"invalid Sec-WebSocket-Key header: !!!!!!!!!!!!!!!!!!!!!!=="},
		{"no version", "GET", "Sec-WebSocket-Key: " + key + "\r\n", 400, "missing Sec-WebSocket-Version header"},
		{"version 8", "GET", "Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 8\r\n", 400, "invalid Sec-WebSocket-Version header: 8"},
		{"POST", "POST", "Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n", 400, "did not receive a valid HTTP request"},
		{"two upgrades", "GET", "Upgrade: websocket\r\nSec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n", 426,
			"invalid Upgrade header: websocket, websocket"},
	} {
		raw := c.method + " /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + c.fields + "\r\n"
		resp, body, br, _ := rawRequest(t, url, raw)
		want := "Failed to open a WebSocket connection: " + c.reason + ".\n"
		if c.status == 426 {
			want += "\nYou cannot access a WebSocket server directly with a browser. You need a WebSocket client.\n"
		}
		if resp.StatusCode != c.status || body != want || !resp.Close || resp.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("%s: %d %v %q, want %d %q", c.name, resp.StatusCode, resp.Header, body, c.status, want)
		}
		if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("%s: the connection stays open (read %d, %v)", c.name, n, err)
		}
		if c.status == 426 && resp.Header.Get("Upgrade") != "websocket" {
			t.Errorf("%s: Upgrade %q", c.name, resp.Header.Get("Upgrade"))
		}
		select {
		case <-streams:
			t.Errorf("%s: the program got the handshake", c.name)
		default:
		}
	}
	// A valid handshake, HTTP/1.0 too (uvicorn opens it as 1.1).
	for _, version := range []string{"1.1", "1.0"} {
		resp, _, _, _ := rawRequest(t, url, "GET /ws HTTP/"+version+"\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "+key+"\r\nSec-WebSocket-Version: 13\r\n\r\n")
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Errorf("valid handshake over HTTP/%s: %d", version, resp.StatusCode)
		}
		<-streams
	}
}

// A websocket the program denies before accepting is a 403 as uvicorn
// sends it: no body, the connection closed.
func TestServeWebSocketDeniedAsUvicornDeniesIt(t *testing.T) {
	wsURL, _ := wsDenyingProgram(t)
	url := "http://" + strings.TrimPrefix(wsURL, "ws://")
	resp, body, br, _ := rawRequest(t, url, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden || body != "" || !resp.Close || resp.Header.Get("Content-Type") != "" {
		t.Errorf("denied: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the connection stays open after the 403 (read %d, %v)", n, err)
	}
}
