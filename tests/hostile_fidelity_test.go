package tests

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http/httputil"
	"strconv"
	"strings"
	"testing"
)

// HTTP fidelity through the real agent, init and an ASGI app (issue 18,
// item 2): what the app sees of a request sent byte for byte, and what the
// client gets of the app's response, as under uvicorn.

// edgeFidelityApp reports the scope it saw as JSON, answers /426, /407 and
// /close with those fields, and counts the websockets it was asked to
// accept (/ws-count).
const edgeFidelityApp = `
import json

state = {"ws": 0}

async def app(scope, receive, send):
    if scope["type"] == "websocket":
        state["ws"] += 1
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    path = scope["path"]
    headers = [(b"content-type", b"application/json")]
    status = 200
    if path == "/426":
        status, headers = 426, headers + [(b"upgrade", b"TLS/1.3"), (b"connection", b"Upgrade")]
    elif path == "/407":
        status, headers = 407, headers + [(b"proxy-authenticate", b'Basic realm="p"')]
    elif path == "/close":
        headers = headers + [(b"connection", b"close")]
    seen = {
        "method": scope["method"], "path": scope["path"], "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"), "http_version": scope["http_version"],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]], "ws": state["ws"],
    }
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
`

// edgeFidelitySeen is what edgeFidelityApp reports.
type edgeFidelitySeen struct {
	Method      string      `json:"method"`
	Path        string      `json:"path"`
	RawPath     string      `json:"raw_path"`
	QueryString string      `json:"query_string"`
	HTTPVersion string      `json:"http_version"`
	Headers     [][2]string `json:"headers"`
	WS          int         `json:"ws"`
}

// header is the value of the app's header name, and whether it had one.
func (s *edgeFidelitySeen) header(name string) (string, bool) {
	for _, h := range s.Headers {
		if h[0] == name {
			return h[1], true
		}
	}
	return "", false
}

// edgeFidelityAgent runs the agent on edgeFidelityApp.
func edgeFidelityAgent(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	requirePythonModules(t, "asyncio", "json")
	addr, _ := runAgent(t, "--workers", "1", writeApp(t, map[string]string{"main.py": edgeFidelityApp}), "main:app")
	return addr
}

// edgeFidelityBody reads a response body framed by Content-Length or chunked
// (the agent sends a body that came whole with its head with a length, one
// that came later chunked), leaving r after it.
func edgeFidelityBody(t *testing.T, headers []string, r *bufio.Reader) []byte {
	t.Helper()
	te, _ := edgeHeaderValue(headers, "Transfer-Encoding")
	chunked := strings.EqualFold(te, "chunked")
	var body io.Reader
	if length, ok := edgeHeaderValue(headers, "Content-Length"); chunked {
		body = httputil.NewChunkedReader(r)
	} else if ok {
		n, err := strconv.ParseInt(length, 10, 64)
		if err != nil {
			t.Fatalf("Content-Length %q", length)
		}
		body = io.LimitReader(r, n)
	} else {
		return nil
	}
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	if chunked { // the end of the (empty) trailer section
		if line, err := r.ReadString('\n'); err != nil || line != "\r\n" {
			t.Fatalf("after the last chunk: %q %v", line, err)
		}
	}
	return b
}

// edgeFidelityRequest sends raw to the agent and returns the status line, the
// header lines and what the app saw (the JSON body).
func edgeFidelityRequest(t *testing.T, addr, raw string) (string, []string, *edgeFidelitySeen) {
	t.Helper()
	status, headers, r, _ := hostileHTTPRaw(t, addr, raw, false)
	var seen edgeFidelitySeen
	body := edgeFidelityBody(t, headers, r)
	if err := json.Unmarshal(body, &seen); err != nil {
		t.Fatalf("%q: %s %q: %v", raw, status, body, err)
	}
	return status, headers, &seen
}

func TestHostileFidelityRequestAsSent(t *testing.T) {
	addr := edgeFidelityAgent(t)
	cases := []struct {
		raw, path, rawPath, query string
	}{
		{"GET /a%41/{x}/%7By%7D/\"<|^`>?q=%20 HTTP/1.1\r\nHost: h\r\n\r\n", "/aA/{x}/{y}/\"<|^`>", "/a%41/{x}/%7By%7D/\"<|^`>", "q=%20"},
		{"GET /p?x#frag HTTP/1.1\r\nHost: h\r\n\r\n", "/p", "/p", "x"},
		{"GET /p%2Fq HTTP/1.1\r\nHost: h\r\n\r\n", "/p/q", "/p%2Fq", ""},
		{"GET http://other/abs%20path?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", "/abs path", "/abs%20path", "x=1"},
		{"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "*", "*", ""},
	}
	for _, c := range cases {
		status, _, seen := edgeFidelityRequest(t, addr, c.raw)
		if hostileHTTPStatus(status) != "200" || seen.Path != c.path || seen.RawPath != c.rawPath || seen.QueryString != c.query {
			t.Errorf("%q: %s, app saw path %q raw_path %q query %q, want %q %q %q", c.raw, status, seen.Path, seen.RawPath, seen.QueryString,
				c.path, c.rawPath, c.query)
		}
	}

	_, _, seen := edgeFidelityRequest(t, addr, "GET / HTTP/1.0\r\nX-A: 1\r\n\r\n")
	if _, ok := seen.header("host"); ok || seen.HTTPVersion != "1.0" {
		t.Errorf("HTTP/1.0 without Host: the app saw %s with headers %q", seen.HTTPVersion, seen.Headers)
	}
	_, _, seen = edgeFidelityRequest(t, addr, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
		"3;ext=1\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n")
	te, _ := seen.header("transfer-encoding")
	tr, _ := seen.header("trailer")
	if te != "chunked" || tr != "x-sum" {
		t.Errorf("chunked request: the app saw headers %q", seen.Headers)
	}
}

func TestHostileFidelityResponseAsSent(t *testing.T) {
	addr := edgeFidelityAgent(t)
	has := func(headers []string, want string) bool {
		for _, h := range headers {
			if strings.EqualFold(h, want) {
				return true
			}
		}
		return false
	}
	status, headers, _ := edgeFidelityRequest(t, addr, "GET /426 HTTP/1.1\r\nHost: h\r\n\r\n")
	if hostileHTTPStatus(status) != "426" || !has(headers, "Upgrade: TLS/1.3") || !has(headers, "Connection: Upgrade") {
		t.Errorf("426: %s %q", status, headers)
	}
	status, headers, _ = edgeFidelityRequest(t, addr, "GET /407 HTTP/1.1\r\nHost: h\r\n\r\n")
	if hostileHTTPStatus(status) != "407" || !has(headers, `Proxy-Authenticate: Basic realm="p"`) {
		t.Errorf("407: %s %q", status, headers)
	}
	status, headers, r, conn := hostileHTTPRaw(t, addr, "GET /close HTTP/1.1\r\nHost: h\r\n\r\n", false)
	if hostileHTTPStatus(status) != "200" || !has(headers, "Connection: close") {
		t.Errorf("the app's Connection: close: %s %q", status, headers)
	}
	edgeFidelityBody(t, headers, r)
	hostileHTTPExpectClose(t, r, conn)
	if _, ok := edgeHeaderValue(headers, "Content-Type"); !ok {
		t.Errorf("the app's Content-Type is missing: %q", headers)
	}
}

// An invalid websocket handshake is refused before the app hears of it.
func TestHostileFidelityInvalidWebSocketHandshake(t *testing.T) {
	addr := edgeFidelityAgent(t)
	status, headers, r, conn := hostileHTTPRaw(t, addr, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", false)
	if hostileHTTPStatus(status) != "400" {
		t.Errorf("invalid key: %s %q", status, headers)
	}
	edgeFidelityBody(t, headers, r)
	hostileHTTPExpectClose(t, r, conn)
	if _, _, seen := edgeFidelityRequest(t, addr, "GET /count HTTP/1.1\r\nHost: h\r\n\r\n"); seen.WS != 0 {
		t.Errorf("the app was asked to accept %d invalid handshakes", seen.WS)
	}
}

// edgeHeaderValue is the value of the response header line name, if any.
func edgeHeaderValue(headers []string, name string) (string, bool) {
	for _, h := range headers {
		if n, v, ok := strings.Cut(h, ":"); ok && strings.EqualFold(n, name) {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}
