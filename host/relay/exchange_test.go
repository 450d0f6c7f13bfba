package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// ended waits for a program stream to end and returns how (nil: it ended
// normally).
func ended(t *testing.T, st *mux.Stream) error {
	t.Helper()
	select {
	case <-st.Done():
		return st.Err()
	case <-time.After(10 * time.Second):
		t.Fatal("the program's stream did not end")
		return nil
	}
}

// resetWith reports whether err is the host's reset of the stream with
// code.
func resetWith(err error, code uint32) bool {
	var serr *mux.StreamError
	return errors.As(err, &serr) && serr.Remote && serr.Code == code
}

// The REQUEST head carries what an ASGI scope needs: method, version,
// scheme, the path below the root path (decoded and raw), the query, the
// root path, the headers as sent (lower-case names, every value), the
// client's and the server's addresses.
func TestServeHeadCarriesTheScope(t *testing.T) {
	heads := make(chan *message.RequestHead, 1)
	f := fixture{rootPath: "/vm/p"}.start(t, func(st *mux.Stream) {
		var h message.RequestHead
		st.RequestHead(&h)
		heads <- &h
		answer(&message.ResponseHead{Status: 204}, "")(st)
	})
	req, _ := http.NewRequest("GET", f.url+"/a%20b/c?x=1&y=%20", nil)
	req.Host = "p.example.org"
	req.Header.Add("X-Multi", "one")
	req.Header.Add("X-Multi", "two")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-heads
	got := map[string]string{}
	for _, f := range h.Headers {
		got[string(f.Name)] += string(f.Value) + ";"
	}
	client, _ := net.ResolveTCPAddr("tcp", strings.TrimPrefix(f.url, "http://"))
	if string(h.Method) != "GET" || string(h.HTTPVersion) != "1.1" || string(h.Scheme) != "http" || string(h.Path) != "/a b/c" ||
		string(h.RawPath) != "/a%20b/c" || string(h.QueryString) != "x=1&y=%20" || string(h.RootPath) != "/vm/p" ||
		got["host"] != "p.example.org;" || got["x-multi"] != "one;two;" || string(h.ClientHost) != "127.0.0.1" || h.ClientPort == 0 ||
		string(h.ServerHost) != "127.0.0.1" || h.ServerPort != uint32(client.Port) {
		t.Fatalf("head %+v, headers %v", h, got)
	}
}

// Bodies stream both ways: the program reads the upload as it comes and
// the client reads each part of the response as soon as it is sent,
// chunked; a body that came whole with its head gets a Content-Length.
func TestServeStreamsBothWays(t *testing.T) {
	next := make(chan struct{})
	goOn := sync.OnceFunc(func() { close(next) })
	defer goOn()
	f := newRelayFixture(t, func(st *mux.Stream) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "hello" {
			st.Reset(frame.CodeInternal, "no first part")
			return
		}
		st.WriteResponse(&message.ResponseHead{Status: 200}, []byte("part 1;"), false)
		<-next // the client has part 1 before part 2 exists
		rest, _ := io.ReadAll(st)
		st.Write([]byte("part 2 after " + string(rest)))
		st.CloseWrite()
	})
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("hello"))
		<-next
		pw.Write([]byte("world"))
		pw.Close()
	}()
	// A part held back fails the test instead of hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	context.AfterFunc(ctx, func() { pr.CloseWithError(ctx.Err()) })
	req, _ := http.NewRequestWithContext(ctx, "POST", f.url+"/up", pr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("part 1;"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "part 1;" {
		t.Fatalf("first part %q %v", first, err)
	}
	goOn()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "part 2 after world" || resp.ContentLength != -1 {
		t.Fatalf("rest %q %v, length %d", rest, err, resp.ContentLength)
	}

	whole := newRelayFixture(t, answer(&message.ResponseHead{Status: 200}, "all at once"))
	resp, err = http.Get(whole.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "all at once" || resp.ContentLength != int64(len(body)) {
		t.Fatalf("whole body %q with length %d", body, resp.ContentLength)
	}
}

// A body over MaxBody is a 413 (a JSON error with the request id): at once
// for a Content-Length over it, without bothering the program; as soon as
// it passes the limit for a chunked one, whose stream is reset with
// BODY_TOO_LARGE.
func TestServeBodyLimit(t *testing.T) {
	streams := make(chan *mux.Stream, 1)
	f := fixture{maxBody: 10}.start(t, func(st *mux.Stream) {
		streams <- st
		io.Copy(io.Discard, st)
	})
	resp, err := http.Post(f.url+"/", "text/plain", strings.NewReader(strings.Repeat("x", 11)))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]string
	json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || doc["request_id"] != "test" || resp.Header.Get("X-Request-Id") != "test" {
		t.Fatalf("Content-Length over the limit: %d %v", resp.StatusCode, doc)
	}
	select {
	case <-streams:
		t.Fatal("the program got a request whose Content-Length was over the limit")
	default:
	}

	resp, err = http.Post(f.url+"/", "text/plain", io.MultiReader(strings.NewReader(strings.Repeat("y", 20)))) // chunked
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked body over the limit: %d", resp.StatusCode)
	}
	if err := ended(t, <-streams); !resetWith(err, frame.CodeBodyTooLarge) {
		t.Fatalf("the program's stream ended with %v, want BODY_TOO_LARGE", err)
	}
}

// A program that does not answer within the exchange's Timeout: 504 for
// the client, TIMEOUT for the program. A client that leaves: CANCEL.
func TestServeTimeoutAndClientLeaving(t *testing.T) {
	t.Parallel()
	streams := make(chan *mux.Stream, 1)
	silent := func(st *mux.Stream) { streams <- st; <-st.Done() }
	f := fixture{timeout: 100 * time.Millisecond}.start(t, silent)
	if status := getStatus(t, f.url+"/"); status != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", status)
	}
	if err := ended(t, <-streams); !resetWith(err, frame.CodeTimeout) {
		t.Fatalf("the program's stream ended with %v, want TIMEOUT", err)
	}

	g := newRelayFixture(t, silent)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", g.url+"/", nil)
	go func() {
		st := <-streams
		cancel()
		streams <- st
	}()
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("the cancelled request got an answer")
	}
	if err := ended(t, <-streams); !resetWith(err, frame.CodeCancel) {
		t.Fatalf("the program's stream ended with %v, want CANCEL", err)
	}
}

// An upgrade (a websocket to an ASGI program, any protocol to an
// executable) is bound by the time limit until the program answers it: a
// 504 and TIMEOUT as for any request. A refusal whose body streams on ends
// when its client leaves (CANCEL) or when the time limit runs out
// (TIMEOUT, the response cut short), not when the program ends it.
func TestUpgradeTimeoutAndClientLeaving(t *testing.T) {
	t.Parallel()
	upgrade := func(url, proto string) *http.Request {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", proto)
		if proto == "websocket" {
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			req.Header.Set("Sec-WebSocket-Version", "13")
		}
		return req
	}
	streams := make(chan *mux.Stream, 1)
	silent := func(st *mux.Stream) { streams <- st; <-st.Done() }
	client := &http.Client{Timeout: 10 * time.Second}
	for _, c := range []struct{ iface, proto string }{{contract.InterfaceASGI, "websocket"}, {contract.InterfaceExecutable, "h2c"}} {
		f := fixture{timeout: 100 * time.Millisecond, iface: c.iface}.start(t, silent)
		resp, err := client.Do(upgrade(f.url+"/", c.proto))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("%s upgrade to a silent program: status %d, want 504", c.proto, resp.StatusCode)
		}
		if err := ended(t, <-streams); !resetWith(err, frame.CodeTimeout) {
			t.Fatalf("%s: the program's stream ended with %v, want TIMEOUT", c.proto, err)
		}
	}

	// A refusal that streams: its head and a first chunk, then nothing.
	streaming := func(st *mux.Stream) {
		st.WriteResponse(&message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte("content-type"), Value: []byte("text/event-stream")}}}, []byte("data: 1\n\n"), false)
		streams <- st
		<-st.Done()
	}
	f := fixture{iface: contract.InterfaceExecutable}.start(t, streaming)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := http.DefaultClient.Do(upgrade(f.url+"/", "h2c").WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, len("data: 1\n\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the refusal's first chunk: %d %q %v", resp.StatusCode, first, err)
	}
	cancel()
	resp.Body.Close()
	if err := ended(t, <-streams); !resetWith(err, frame.CodeCancel) {
		t.Fatalf("the refusal's stream ended with %v after its client left, want CANCEL", err)
	}

	g := fixture{timeout: 200 * time.Millisecond, iface: contract.InterfaceExecutable}.start(t, streaming)
	resp, err = client.Do(upgrade(g.url+"/", "h2c"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || string(body) != "data: 1\n\n" {
		t.Fatalf("a refusal cut by the time limit read as %q, %v: want its first chunk and an error", body, err)
	}
	if err := ended(t, <-streams); !resetWith(err, frame.CodeTimeout) {
		t.Fatalf("the refusal's stream ended with %v at the time limit, want TIMEOUT", err)
	}
}

// A request whose time limit runs out while it waits for one of the
// program's streams (all busy) is a 504, as one the program was slow to
// answer, not a 502.
func TestServeTimeoutWaitingForAStream(t *testing.T) {
	t.Parallel()
	silent := func(st *mux.Stream) { <-st.Done() }
	f := fixture{timeout: 200 * time.Millisecond, maxStreams: 1}.start(t, silent)
	busy, err := f.host.Open(context.Background(), &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Reset(frame.CodeCancel, "test over")
	if status := getStatus(t, f.url+"/"); status != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", status)
	}
}

// How a program's reset before answering reaches the client.
func TestServeMapsResetsToStatuses(t *testing.T) {
	for code, want := range map[uint32]int{
		frame.CodeWorkerLost:    http.StatusBadGateway,
		frame.CodeUnavailable:   http.StatusServiceUnavailable,
		frame.CodeRefusedStream: http.StatusServiceUnavailable,
		frame.CodeTimeout:       http.StatusGatewayTimeout,
		frame.CodeBodyTooLarge:  http.StatusRequestEntityTooLarge,
		frame.CodeInternal:      http.StatusBadGateway,
	} {
		f := newRelayFixture(t, func(st *mux.Stream) { st.Reset(code, "no") })
		resp, err := http.Get(f.url + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("reset %d: status %d, want %d", code, resp.StatusCode, want)
		}
	}
}

// A response that breaks off after it started reaches the client
// incomplete, never as a complete shorter body.
func TestServeResponseBreakingOffIsIncomplete(t *testing.T) {
	f := newRelayFixture(t, func(st *mux.Stream) {
		st.WriteResponse(&message.ResponseHead{Status: 200}, []byte("the beginning"), false)
		time.Sleep(50 * time.Millisecond)
		st.Reset(frame.CodeWorkerLost, "worker died")
	})
	resp, err := http.Get(f.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if body, err := io.ReadAll(resp.Body); err == nil {
		t.Fatalf("a broken response read as complete: %q", body)
	}
}

// An executable's protocol switch passes through as raw bytes both ways
// once it answers 101; any other answer is its own response.
func TestServeUpgradePassesBytesThrough(t *testing.T) {
	statuses := make(chan int, 2)
	f := fixture{iface: "executable", statuses: statuses}.start(t, func(st *mux.Stream) {
		var h message.RequestHead
		st.RequestHead(&h)
		if string(h.Path) == "/refuse" {
			st.WriteResponse(&message.ResponseHead{Status: 426, Headers: []message.HeaderField{{Name: []byte("x-why"), Value: []byte("no")}}}, []byte("not here"), true)
			return
		}
		st.WriteResponse(&message.ResponseHead{Status: 101, Headers: []message.HeaderField{
			{Name: []byte("upgrade"), Value: []byte("echo")}, {Name: []byte("connection"), Value: []byte("upgrade")}}}, nil, false)
		io.Copy(st, st) // echo until the client ends its side
		st.CloseWrite()
	})
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "GET /switch HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nearly bytes;")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("switch: %v %+v", err, resp)
	}
	fmt.Fprint(conn, "later bytes")
	conn.(*net.TCPConn).CloseWrite()
	echoed, err := io.ReadAll(br)
	if err != nil || string(echoed) != "early bytes;later bytes" {
		t.Fatalf("echoed %q %v", echoed, err)
	}
	// The metrics record the 101, which the relay wrote itself on the
	// connection it took over.
	if status := <-statuses; status != http.StatusSwitchingProtocols {
		t.Errorf("recorded status %d for the switch, want 101", status)
	}

	req, _ := http.NewRequest("GET", f.url+"/refuse", nil)
	req.Header.Set("Upgrade", "echo")
	req.Header.Set("Connection", "Upgrade")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 426 || resp.Header.Get("X-Why") != "no" || string(body) != "not here" {
		t.Fatalf("refusal: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if status := <-statuses; status != 426 {
		t.Errorf("recorded status %d for the refusal, want 426", status)
	}
}

// An ASGI program's websocket: accepted with the subprotocol and headers
// it chose, text and binary messages both ways, and each side's close
// with its code and reason reaches the other.
func TestWebSocketMessagesAndClosesCross(t *testing.T) {
	closes := make(chan *mux.WSCloseError, 1)
	f := fixture{iface: "asgi"}.start(t, func(st *mux.Stream) {
		var h message.RequestHead
		st.RequestHead(&h)
		if h.Kind != message.KindWebSocket || len(h.Subprotocols) != 2 || string(h.Subprotocols[1]) != "chat" {
			st.CloseWebSocket(1008, "unexpected head")
			return
		}
		st.WriteResponse(&message.ResponseHead{Status: 101, Subprotocol: []byte("chat"),
			Headers: []message.HeaderField{{Name: []byte("x-app"), Value: []byte("1")}}}, nil, false)
		for {
			text, msg, err := st.ReadMessage(1 << 20)
			var closed *mux.WSCloseError
			if errors.As(err, &closed) {
				closes <- closed
				return
			}
			if err != nil {
				return
			}
			if string(msg) == "close please" {
				st.CloseWebSocket(4001, "as asked")
				return
			}
			st.WriteMessage(text, append([]byte("echo: "), msg...))
		}
	})
	url := "ws" + strings.TrimPrefix(f.url, "http")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"other", "chat"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Subprotocol() != "chat" || resp.Header.Get("X-App") != "1" {
		t.Fatalf("accepted with %q, headers %v", c.Subprotocol(), resp.Header)
	}
	for _, m := range []struct {
		typ  websocket.MessageType
		data string
	}{{websocket.MessageText, "hi"}, {websocket.MessageBinary, "\x00\x01"}} {
		if err := c.Write(ctx, m.typ, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil || typ != m.typ || string(got) != "echo: "+m.data {
			t.Fatalf("echo of %q: %v %q %v", m.data, typ, got, err)
		}
	}
	c.Close(4000, "bye")
	select {
	case closed := <-closes:
		if closed.Code != 4000 || closed.Reason != "bye" {
			t.Fatalf("the program saw close %d %q", closed.Code, closed.Reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client's close did not reach the program")
	}

	c, _, err = websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"other", "chat"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Write(ctx, websocket.MessageText, []byte("close please"))
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != 4001 {
		t.Fatalf("the program's close reached the client as %v", err)
	}
}

// getStatus GETs url and returns the response's status.
func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
