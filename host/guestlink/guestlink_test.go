package guestlink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// pair connects a host session serving guest streams with h (as the
// lifecycle manager installs it) to a guest session, which it returns.
func pair(t *testing.T, h http.Handler) *mux.Session {
	t.Helper()
	a, b := net.Pipe()
	host := mux.Client(a, mux.Config{MaxStreams: contract.MaxAPIStreams, Handler: Handler(h, nil)})
	guest := mux.Server(b, mux.Config{})
	t.Cleanup(func() { guest.Close(); host.Close() })
	return guest
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// call is a guest API call as init makes it.
type call struct {
	method, path, query string
	headers             map[string]string
	body                []byte
}

type answer struct {
	status  int
	headers map[string]string
	body    []byte
	err     error
}

func (c call) do(ctx context.Context, guest *mux.Session) answer {
	head := &message.RequestHead{HTTPVersion: []byte("1.1"), Method: []byte(c.method), Scheme: []byte("http"),
		Path: []byte(c.path), RawPath: []byte(c.path), QueryString: []byte(c.query),
		ClientHost: []byte("127.0.0.1"), ClientPort: 41000, ServerHost: []byte("127.0.0.1"), ServerPort: 7052}
	head.Headers = append(head.Headers, message.HeaderField{Name: []byte("host"), Value: []byte("127.0.0.1:7052")})
	for k, v := range c.headers {
		head.Headers = append(head.Headers, message.HeaderField{Name: []byte(k), Value: []byte(v)})
	}
	st, err := guest.Open(ctx, head, c.body, true)
	if err != nil {
		return answer{err: err}
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		return answer{err: err}
	}
	a := answer{status: int(rh.Status), headers: map[string]string{}}
	for _, f := range rh.Headers {
		a.headers[string(f.Name)] = string(f.Value)
	}
	a.body, a.err = io.ReadAll(st)
	return a
}

// A call becomes an *http.Request as a server sees it (method, target,
// headers, the caller's address, the body), and the handler's status,
// headers and streamed body go back.
func TestCallIsServedAsAnHTTPRequest(t *testing.T) {
	var seen atomic.Pointer[http.Request]
	var body []byte
	guest := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r)
		body, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Connection", "close") // hop-by-hop: not relayed
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte("part one, "))
		w.(http.Flusher).Flush()
		w.Write([]byte("part two"))
	}))
	payload := bytes.Repeat([]byte("x"), 300<<10) // more than a window
	a := call{method: "PUT", path: "/v1/kv/a%2Fb", query: "ttl=5", headers: map[string]string{"x-thing": "1"}, body: payload}.do(testContext(t), guest)
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.status != http.StatusAccepted || string(a.body) != "part one, part two" || a.headers["content-type"] != "text/plain" {
		t.Errorf("answer %d %q %v", a.status, a.body, a.headers)
	}
	if _, ok := a.headers["connection"]; ok {
		t.Error("a hop-by-hop header crossed")
	}
	r := seen.Load()
	if r.Method != "PUT" || r.URL.Path != "/v1/kv/a/b" || r.URL.EscapedPath() != "/v1/kv/a%2Fb" || r.URL.RawQuery != "ttl=5" ||
		r.RequestURI != "/v1/kv/a%2Fb?ttl=5" || r.Header.Get("X-Thing") != "1" || r.RemoteAddr != "127.0.0.1:41000" || r.Host != "127.0.0.1:7052" {
		t.Errorf("request %s %s %q %q %v %s %s", r.Method, r.URL, r.RequestURI, r.URL.RawQuery, r.Header, r.RemoteAddr, r.Host)
	}
	if !bytes.Equal(body, payload) {
		t.Errorf("the handler read %d bytes, want %d", len(body), len(payload))
	}
}

// errorBody decodes a guest API error.
func errorBody(t *testing.T, b []byte) (code, msg string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body %q: %v", b, err)
	}
	return e.Error.Code, e.Error.Message
}

// Without a handler every call is 503 with the JSON error saying so.
func TestNoHandlerAnswers503(t *testing.T) {
	guest := pair(t, nil)
	a := call{method: "GET", path: "/v1/properties"}.do(testContext(t), guest)
	if a.err != nil || a.status != http.StatusServiceUnavailable || a.headers["content-type"] != "application/json" {
		t.Fatalf("%+v", a)
	}
	if code, msg := errorBody(t, a.body); code != "unavailable" || msg != NoAPI {
		t.Errorf("error %q %q", code, msg)
	}
}

// A handler that panics answers 500 (or, once its answer has begun,
// resets the stream); the session and the next calls go on.
func TestHandlerPanicIsOneCallsFailure(t *testing.T) {
	guest := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/early":
			w.Header().Set("X-Lost", "1")
			panic("boom")
		case "/late":
			w.Write([]byte("begun"))
			w.(http.Flusher).Flush()
			panic("boom")
		}
		w.Write([]byte("fine"))
	}))
	ctx := testContext(t)
	a := call{method: "GET", path: "/early"}.do(ctx, guest)
	if a.err != nil || a.status != http.StatusInternalServerError || a.headers["x-lost"] != "" {
		t.Fatalf("a panic before answering: %+v", a)
	}
	if code, _ := errorBody(t, a.body); code != "internal" {
		t.Errorf("code %q", code)
	}
	a = call{method: "GET", path: "/late"}.do(ctx, guest)
	var serr *mux.StreamError
	if !errors.As(a.err, &serr) || serr.Code != frame.CodeInternal {
		t.Fatalf("a panic after the answer began: %+v, want the stream reset with INTERNAL_ERROR", a)
	}
	if a := (call{method: "GET", path: "/next"}).do(ctx, guest); a.err != nil || string(a.body) != "fine" {
		t.Fatalf("the next call: %+v", a)
	}
}

// A body past contract.MaxAPIBody reads as *http.MaxBytesError, which the
// handler answers 413; exactly the limit is fine.
func TestBodyIsCutAtTheLimit(t *testing.T) {
	guest := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			Error(w, http.StatusRequestEntityTooLarge, "too_large", "too large")
			return
		}
		w.Write([]byte(strings.Repeat("n", int(n%7)) + "ok"))
	}))
	ctx := testContext(t)
	if a := (call{method: "PUT", path: "/", body: make([]byte, contract.MaxAPIBody)}).do(ctx, guest); a.err != nil || a.status != 200 {
		t.Fatalf("a body of exactly the limit: %+v", a)
	}
	a := call{method: "PUT", path: "/", body: make([]byte, contract.MaxAPIBody+1)}.do(ctx, guest)
	if a.err != nil || a.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("a body past the limit: %+v", a)
	}
}

// A guest that resets its stream mid-body (the calling program left):
// the handler's body read fails and its context ends; the session goes on.
func TestVanishedCallerEndsTheHandler(t *testing.T) {
	ended := make(chan error, 1)
	reading := make(chan struct{})
	guest := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 10)
		io.ReadFull(r.Body, buf)
		close(reading)
		_, err := io.ReadAll(r.Body)
		<-r.Context().Done()
		ended <- err
	}))
	ctx := testContext(t)
	st, err := guest.Open(ctx, &message.RequestHead{Method: []byte("PUT"), Path: []byte("/v1/kv/k")}, []byte("first bytes of a body"), false)
	if err != nil {
		t.Fatal(err)
	}
	<-reading
	st.Reset(frame.CodeCancel, "the caller went away")
	select {
	case err := <-ended:
		if err == nil {
			t.Error("the body read ended without an error")
		}
	case <-ctx.Done():
		t.Fatal("the handler did not end")
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := guest.Ping(pingCtx); err != nil {
		t.Fatal(err)
	}
}

// A handler that answers without reading the body: the answer arrives
// whole and the rest of the body is refused with NO_ERROR (SPEC §5.3).
func TestAnswerWithoutReadingTheBody(t *testing.T) {
	guest := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Error(w, http.StatusNotFound, "not_found", "no such key")
	}))
	ctx := testContext(t)
	st, err := guest.Open(ctx, &message.RequestHead{Method: []byte("PUT"), Path: []byte("/")}, []byte("a body never finished"), false)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil || rh.Status != http.StatusNotFound {
		t.Fatalf("%d %v", rh.Status, err)
	}
	b, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := errorBody(t, b); code != "not_found" {
		t.Errorf("code %q", code)
	}
	select {
	case <-st.Done():
	case <-ctx.Done():
		t.Fatal("the stream did not end")
	}
	if _, err := st.Write([]byte("more")); err == nil {
		t.Error("writing the rest of the body after the host's RESET succeeded")
	}
}

// A guest that stops sending its body mid-way, or stops reading the
// answer, cannot hold the handler: its reads and writes end at their
// deadline, which the handler sets through http.ResponseController
// (guestlink sets one of its own, CallTimeout, for every call).
func TestStalledGuestEndsAtTheDeadlines(t *testing.T) {
	ended := make(chan error, 2)
	guest := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
			ended <- err
			return
		}
		if r.Method == http.MethodPut {
			_, err := io.ReadAll(r.Body)
			ended <- err
			return
		}
		if err := rc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
			ended <- err
			return
		}
		// More than the stream's window, to a guest that reads none of it.
		_, err := w.Write(make([]byte, 4*mux.DefaultInitialWindow))
		ended <- err
	}))
	ctx := testContext(t)
	for _, method := range []string{"PUT", "GET"} {
		st, err := guest.Open(ctx, &message.RequestHead{Method: []byte(method), Path: []byte("/v1/kv/k")}, []byte("a body never finished"), method == "GET")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-ended:
			if !errors.Is(err, mux.ErrTimeout) {
				t.Errorf("%s: the handler ended with %v, want a timeout", method, err)
			}
		case <-ctx.Done():
			t.Fatalf("%s: the handler is still held by a stalled guest", method)
		}
		if method == "GET" {
			// The answer broke off: the guest is told, not left waiting.
			select {
			case <-st.Done():
				var serr *mux.StreamError
				if !errors.As(st.Err(), &serr) || serr.Code == frame.CodeNoError {
					t.Errorf("an answer cut short ended with %v, want a reset that is not NO_ERROR", st.Err())
				}
			case <-ctx.Done():
				t.Fatal("the stream of an answer cut short did not end")
			}
		}
	}
}
