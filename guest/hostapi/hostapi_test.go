package hostapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// host is a fake host agent: a client session whose handler serves the
// streams init opens.
type host struct {
	guest *mux.Session // init's end, what Options.Session returns
	host  *mux.Session
}

func newHost(t *testing.T, maxStreams uint32, handler func(*mux.Stream)) *host {
	t.Helper()
	a, b := net.Pipe()
	h := &host{host: mux.Client(a, mux.Config{MaxStreams: maxStreams, Handler: handler}), guest: mux.Server(b, mux.Config{})}
	t.Cleanup(func() { h.guest.Close(); h.host.Close() })
	return h
}

// listen starts the guest API on a free loopback port.
func listen(t *testing.T, opt Options) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0", opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

func session(h *host) func() *mux.Session { return func() *mux.Session { return h.guest } }

// echo answers with what it received: the head's fields and the body.
func echo(st *mux.Stream) {
	var h message.RequestHead
	if err := st.RequestHead(&h); err != nil {
		st.Reset(frame.CodeProtocol, err.Error())
		return
	}
	body, err := io.ReadAll(st)
	if err != nil {
		return
	}
	var hdrs []string
	for _, f := range h.Headers {
		hdrs = append(hdrs, string(f.Name)+"="+string(f.Value))
	}
	out := fmt.Sprintf("%s %s %s %s %d %s", h.Method, h.Path, h.RawPath, h.QueryString, len(body), strings.Join(hdrs, ","))
	st.WriteResponse(&message.ResponseHead{Status: 201, Headers: []message.HeaderField{
		{Name: []byte("x-echo"), Value: []byte("yes")}, {Name: []byte("connection"), Value: []byte("close")},
	}}, []byte(out), true)
}

func errorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("%d: error body: %v", resp.StatusCode, err)
	}
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("content type %q", resp.Header.Get("Content-Type"))
	}
	return e.Error.Code
}

func do(t *testing.T, method, url string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// A call crosses as a stream with its method, paths, query, headers and
// body, and the host's status, headers and body come back.
func TestCallCrossesToTheHost(t *testing.T) {
	h := newHost(t, contract.MaxAPIStreams, echo)
	s := listen(t, Options{Session: session(h)})
	resp := do(t, "PUT", s.URL()+"/v1/kv/a%2Fb?ttl=3", strings.NewReader(strings.Repeat("v", 500<<10)))
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 || resp.Header.Get("X-Echo") != "yes" || resp.Header.Get("Connection") == "close" || resp.Header.Get("Content-Type") != "" {
		t.Errorf("answer %d %v", resp.StatusCode, resp.Header)
	}
	got := string(b)
	if !strings.HasPrefix(got, fmt.Sprintf("PUT /v1/kv/a/b /v1/kv/a%%2Fb ttl=3 %d host=%s", 500<<10, s.Addr())) {
		t.Errorf("the host saw %q", got)
	}
}

// No session with the host: 503 with a JSON error, at once.
func TestNoSessionIs503(t *testing.T) {
	s := listen(t, Options{})
	resp := do(t, "GET", s.URL()+"/v1/properties", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d %v", resp.StatusCode, resp.Header)
	}
	if code := errorCode(t, resp); code != "no_host" {
		t.Errorf("code %q", code)
	}
	// A session that has ended is no session.
	h := newHost(t, contract.MaxAPIStreams, echo)
	h.host.Close()
	<-h.guest.Done()
	s2 := listen(t, Options{Session: session(h)})
	if resp := do(t, "GET", s2.URL()+"/", nil); resp.StatusCode != http.StatusServiceUnavailable || errorCode(t, resp) != "no_host" {
		t.Errorf("a closed session: %d", resp.StatusCode)
	}
}

// The session is looked up per call: a host that reconnects is reached
// through its new session.
func TestCallsFollowTheCurrentSession(t *testing.T) {
	var cur atomic.Pointer[mux.Session]
	s := listen(t, Options{Session: cur.Load})
	for i := range 2 {
		h := newHost(t, contract.MaxAPIStreams, func(st *mux.Stream) {
			st.WriteResponse(&message.ResponseHead{Status: 200}, fmt.Appendf(nil, "host %d", i), true)
		})
		cur.Store(h.guest)
		resp := do(t, "GET", s.URL()+"/", nil)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != fmt.Sprintf("host %d", i) {
			t.Errorf("call %d reached %q", i, b)
		}
		h.host.Close()
	}
}

// Bodies past contract.MaxAPIBody are 413, by Content-Length before
// anything crosses, or when a chunked body passes it (the stream is reset
// with BODY_TOO_LARGE).
func TestBodyLimit(t *testing.T) {
	var reset atomic.Value
	h := newHost(t, contract.MaxAPIStreams, func(st *mux.Stream) {
		if _, err := io.Copy(io.Discard, st); err != nil {
			reset.Store(err)
			return
		}
		st.WriteResponse(&message.ResponseHead{Status: 200}, nil, true)
	})
	s := listen(t, Options{Session: session(h)})
	resp := do(t, "PUT", s.URL()+"/v1/kv/k", bytes.NewReader(make([]byte, contract.MaxAPIBody+1)))
	if resp.StatusCode != http.StatusRequestEntityTooLarge || errorCode(t, resp) != "body_too_large" {
		t.Errorf("Content-Length past the limit: %d", resp.StatusCode)
	}
	if n := h.host.NumStreams(); n != 0 || reset.Load() != nil {
		t.Errorf("a body refused by its length reached the host")
	}
	// Chunked: io.MultiReader hides the length.
	resp = do(t, "PUT", s.URL()+"/v1/kv/k", io.MultiReader(bytes.NewReader(make([]byte, contract.MaxAPIBody+1))))
	if resp.StatusCode != http.StatusRequestEntityTooLarge || errorCode(t, resp) != "body_too_large" {
		t.Errorf("a chunked body past the limit: %d", resp.StatusCode)
	}
	// The host's handler sees the reset a moment after the caller's 413.
	for deadline := time.Now().Add(10 * time.Second); reset.Load() == nil && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	var serr *mux.StreamError
	if err, _ := reset.Load().(error); !errors.As(err, &serr) || serr.Code != frame.CodeBodyTooLarge {
		t.Errorf("the host's stream ended with %v, want BODY_TOO_LARGE", reset.Load())
	}
	resp = do(t, "PUT", s.URL()+"/v1/kv/k", io.MultiReader(bytes.NewReader(make([]byte, contract.MaxAPIBody))))
	if resp.StatusCode != 200 {
		t.Errorf("a chunked body of exactly the limit: %d", resp.StatusCode)
	}
	resp.Body.Close()
}

// A host that refuses the stream (a version-1 host without the API: RESET
// REFUSED_STREAM) is 503; one that never answers is 504 after
// HeadTimeout, and its stream is reset with TIMEOUT.
func TestHostRefusesOrNeverAnswers(t *testing.T) {
	timedOut := make(chan error, 1)
	h := newHost(t, contract.MaxAPIStreams, func(st *mux.Stream) {
		var head message.RequestHead
		st.RequestHead(&head)
		if string(head.Path) == "/refused" {
			st.Reset(frame.CodeRefusedStream, "no guest API here")
			return
		}
		<-st.Done()
		timedOut <- st.Err()
	})
	s := listen(t, Options{Session: session(h), HeadTimeout: 300 * time.Millisecond})
	if resp := do(t, "GET", s.URL()+"/refused", nil); resp.StatusCode != http.StatusServiceUnavailable || errorCode(t, resp) != "no_host" {
		t.Errorf("a refused stream: %d", resp.StatusCode)
	}
	if resp := do(t, "GET", s.URL()+"/silent", nil); resp.StatusCode != http.StatusGatewayTimeout || errorCode(t, resp) != "timeout" {
		t.Errorf("a host that never answers: %d", resp.StatusCode)
	}
	var serr *mux.StreamError
	if err := <-timedOut; !errors.As(err, &serr) || serr.Code != frame.CodeTimeout {
		t.Errorf("the host's stream ended with %v, want TIMEOUT", err)
	}
}

// A caller that vanishes mid-body: the host's stream is reset (CANCEL)
// and the server goes on serving.
func TestVanishedCallerResetsTheStream(t *testing.T) {
	ended := make(chan error, 1)
	h := newHost(t, contract.MaxAPIStreams, func(st *mux.Stream) {
		var head message.RequestHead
		st.RequestHead(&head)
		if string(head.Path) != "/upload" {
			echo(st)
			return
		}
		_, err := io.Copy(io.Discard, st)
		ended <- err
	})
	s := listen(t, Options{Session: session(h)})
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n%s", strings.Repeat("a", 5000))
	time.Sleep(100 * time.Millisecond) // let the first bytes cross (no assertion on time)
	conn.Close()
	select {
	case err := <-ended:
		var serr *mux.StreamError
		if !errors.As(err, &serr) || serr.Code != frame.CodeCancel {
			t.Errorf("the host's read ended with %v, want the stream reset with CANCEL", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the host's stream did not end")
	}
	if resp := do(t, "GET", s.URL()+"/after", nil); resp.StatusCode != 201 {
		t.Errorf("the next call: %d", resp.StatusCode)
	}
}

// A flood of calls: at most MaxCalls are in progress and the host never
// serves more than its MaxStreams at once; the others are 503 "busy" at
// once, and once the flood is over calls are served again.
func TestFloodIsBounded(t *testing.T) {
	const hostStreams, maxCalls, callers = 4, 8, 64
	release := make(chan struct{})
	var mu sync.Mutex
	running, peak := 0, 0
	h := newHost(t, hostStreams, func(st *mux.Stream) {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		echo(st)
	})
	s := listen(t, Options{Session: session(h), MaxCalls: maxCalls})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: callers}}
	defer client.CloseIdleConnections() // dialled but unused ones would hold Close for 5 s
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	statuses := make(chan int, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(s.URL() + "/v1/properties")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	// The busy ones answer without waiting for the others.
	busy := 0
	for busy < callers-maxCalls {
		select {
		case st := <-statuses:
			if st != http.StatusServiceUnavailable {
				t.Fatalf("status %d while the host holds every call", st)
			}
			busy++
		case <-time.After(30 * time.Second):
			t.Fatalf("%d calls answered busy, want %d", busy, callers-maxCalls)
		}
	}
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != 201 {
			t.Errorf("a call in progress got %d", st)
		}
	}
	mu.Lock()
	if peak > hostStreams {
		t.Errorf("the host served %d calls at once, more than its %d", peak, hostStreams)
	}
	mu.Unlock()
	if resp := do(t, "GET", s.URL()+"/after", nil); resp.StatusCode != 201 {
		t.Errorf("a call after the flood: %d", resp.StatusCode)
	}
}
