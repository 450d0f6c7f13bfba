package relay

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// relayFixture is a relay behind a real HTTP server, to an in-process
// guest session whose streams an app answers.
type relayFixture struct {
	url   string
	guest *mux.Session
	host  *mux.Session
}

// fixture says how a relayFixture relays: the program's interface (for
// ServeAny) and the exchange's root path and bounds.
type fixture struct {
	iface    string
	rootPath string
	maxBody  int64
	timeout  time.Duration
	// maxStreams bounds the guest's concurrent streams (0: the default).
	maxStreams uint32
	// statuses, when set, gets the status each exchange recorded in a
	// metrics.StatusRecorder (as the agent's router keeps one).
	statuses chan int
}

// newRelayFixture relays with Serve, without bounds.
func newRelayFixture(t *testing.T, app func(*mux.Stream)) *relayFixture {
	return fixture{}.start(t, app)
}

// start serves ServeAny as fx says, to a guest session whose streams app
// answers.
func (fx fixture) start(t *testing.T, app func(*mux.Stream)) *relayFixture {
	t.Helper()
	a, b := net.Pipe()
	guest := mux.Server(b, mux.Config{Handler: app, KeepaliveInterval: -1, MaxStreams: fx.maxStreams})
	host := mux.Client(a, mux.Config{KeepaliveInterval: -1})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		TrimFragment(r)
		if fx.statuses != nil {
			rec := &metrics.StatusRecorder{ResponseWriter: w}
			defer func() { fx.statuses <- rec.Status }()
			w = rec
		}
		ServeAny(w, r, &Exchange{Session: host, RootPath: fx.rootPath, Path: r.URL.Path, RawPath: RawPath(r), MaxBody: fx.maxBody,
			Timeout: fx.timeout, Log: slog.New(slog.DiscardHandler), ID: "test"}, fx.iface)
	}))
	srv.Config.MaxHeaderBytes = MaxHeaderBytes
	srv.Config.DisableGeneralOptionsHandler = true // as the agent's front
	srv.Start()
	t.Cleanup(func() {
		// The sessions first: a handler still waiting on a stream (a test
		// that failed) then ends, and srv.Close does not wait for it.
		host.Close()
		guest.Close()
		srv.Close()
	})
	return &relayFixture{url: srv.URL, guest: guest, host: host}
}

// answer is an app that replies with rh and body after reading the
// request body.
func answer(rh *message.ResponseHead, body string) func(*mux.Stream) {
	return func(st *mux.Stream) {
		if _, err := io.Copy(io.Discard, st); err != nil {
			return
		}
		st.WriteResponse(rh, []byte(body), true)
	}
}

// A head that passes net/http's bound but encodes larger than the guest's
// frames is a 431, and the session goes on.
func TestServeRefusesAHeadTooLargeForAFrame(t *testing.T) {
	f := newRelayFixture(t, answer(&message.ResponseHead{Status: 200}, "ok"))
	resp, err := http.Get(f.url + "/" + strings.Repeat("p", 34000))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
	resp, err = http.Get(f.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" || f.host.Err() != nil {
		t.Fatalf("after the refusal: %d %q, session %v", resp.StatusCode, body, f.host.Err())
	}
}

// An invalid response head is a 502, and the app's stream is reset.
func TestServeAnswers502ToAnInvalidResponseHead(t *testing.T) {
	reset := make(chan error, 1)
	f := newRelayFixture(t, func(st *mux.Stream) {
		st.WriteResponse(&message.ResponseHead{Status: 200, Headers: []message.HeaderField{
			{Name: []byte("content-length"), Value: []byte("5")}, {Name: []byte("content-length"), Value: []byte("6")}}}, nil, false)
		<-st.Done()
		reset <- st.Err()
	})
	resp, err := http.Get(f.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	var serr *mux.StreamError
	select {
	case err := <-reset:
		if !errors.As(err, &serr) || serr.Code != frame.CodeProtocol {
			t.Fatalf("the app's stream ended with %v, want a PROTOCOL_ERROR reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the app's stream was not reset")
	}
}

// No Content-Type is sniffed for an app that sent none.
func TestServeInventsNoContentType(t *testing.T) {
	f := newRelayFixture(t, answer(&message.ResponseHead{Status: 200}, "<html>hi</html>"))
	resp, err := http.Get(f.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct, ok := resp.Header["Content-Type"]; ok {
		t.Fatalf("Content-Type %q invented", ct)
	}
}

// rawExchange sends raw bytes to the server and returns the response and
// whether the server closed the connection after it, waiting at most
// patience for the close.
func rawExchange(t *testing.T, url, raw string, patience time.Duration) (*http.Response, bool) {
	t.Helper()
	resp, _, br, conn := rawRequest(t, url, raw)
	conn.SetReadDeadline(time.Now().Add(patience))
	_, err := br.ReadByte()
	var nerr net.Error
	return resp, !(errors.As(err, &nerr) && nerr.Timeout())
}

// A malformed chunked body is the client's fault: 400, connection closed.
func TestServeAnswers400ToAMalformedBody(t *testing.T) {
	f := newRelayFixture(t, answer(&message.ResponseHead{Status: 200}, "ok"))
	resp, closed := rawExchange(t, f.url, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 10*time.Second)
	if resp.StatusCode != http.StatusBadRequest || !closed {
		t.Fatalf("status %d, connection closed %v; want 400 and closed", resp.StatusCode, closed)
	}
}

// A request with both Content-Length and Transfer-Encoding is answered,
// then its connection closed.
func TestServeClosesAfterContentLengthWithTransferEncoding(t *testing.T) {
	t.Parallel()
	f := newRelayFixture(t, answer(&message.ResponseHead{Status: 200}, "ok"))
	resp, closed := rawExchange(t, f.url, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 10*time.Second)
	if resp.StatusCode != 200 || !closed {
		t.Fatalf("status %d, connection closed %v; want 200 and closed", resp.StatusCode, closed)
	}
	// A plain request keeps its connection (it would close at once).
	resp, closed = rawExchange(t, f.url, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 500*time.Millisecond)
	if resp.StatusCode != 200 || closed {
		t.Fatalf("plain request: status %d, connection closed %v; want 200 and kept", resp.StatusCode, closed)
	}
}
