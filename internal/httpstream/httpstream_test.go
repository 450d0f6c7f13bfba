package httpstream

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
