package front

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/metrics"
	"golang.org/x/sys/unix"
)

// testKey is the cluster's forwarding key in these tests.
var testKey = []byte("0123456789abcdef0123456789abcdef")

// forwarding configures forwardingFront.
type forwarding struct {
	peer    func(node string) string // node2's address
	live    func(node string) bool   // nil: every node is
	seconds float64                  // the program's time limit
	maxBody int64
}

// forwardingFront is the router of node1 for a persistent program that
// runs on node2, whose public listener is o.peer's (a test server
// standing for node2's agent).
func forwardingFront(t *testing.T, o forwarding) string {
	t.Helper()
	_, url := forwardingRouter(t, o)
	return url
}

// forwardingRouter is forwardingFront, with its router (for its metrics).
func forwardingRouter(t *testing.T, o forwarding) (*Router, string) {
	t.Helper()
	manager, programs := persistentKeeper(t, &backendtest.Backend{Handler: backendtest.Echo}, o.seconds)
	forward := NewForwarder("node1", o.peer, func() []byte { return testKey }, o.live, nil)
	t.Cleanup(forward.Close)
	rt := &Router{Programs: programs, Manager: manager, Log: slog.New(slog.DiscardHandler),
		Metrics: metrics.New(func() int { return 0 }), MaxBody: o.maxBody,
		Owner: func(string) (bool, string) { return false, "node2" }, Forward: forward}
	srv := httptest.NewServer(rt)
	t.Cleanup(srv.Close)
	return rt, srv.URL
}

// at is a peer function answering addr for node2.
func at(addr string) func(string) string {
	return func(node string) string {
		if node == "node2" {
			return strings.TrimPrefix(addr, "http://")
		}
		return ""
	}
}

// A request for a persistent program that runs on another node is relayed
// there as it came (method, target byte for byte, query included, Host,
// body), with the forwarding node named, no key, the client's
// X-Forwarded-* and Forwarded kept (this node's view of its peer added to
// X-Forwarded-For, nothing else added), and its answer comes back as the
// owner gave it, streamed.
func TestForwardingToTheOwner(t *testing.T) {
	release := make(chan struct{})
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen", fmt.Sprintf("%s %s host=%s by=%s key=%t xff=%s xfp=%s xfh=%s fwd=%s id=%t body=%s", r.Method, r.RequestURI, r.Host,
			r.Header.Get(ForwardedBy), r.Header.Get(KeyHeader) != "", r.Header.Values("X-Forwarded-For"),
			r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("Forwarded"), r.Header.Get("X-Request-Id") != "", body))
		if r.URL.Path == "/vm/keeper/stream" {
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			<-release
			io.WriteString(w, "last\n")
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "made")
	}))
	defer owner.Close()
	defer close(release)
	front := forwardingFront(t, forwarding{peer: at(owner.URL)})

	// Sent by hand: Go's client would re-encode the target.
	conn := dialFront(t, front, 10*time.Second)
	io.WriteString(conn, "POST /vm/keeper/{a}/b%2fc?q=1;c=3&z=%zz&a=x+y HTTP/1.1\r\nHost: example.test\r\nContent-Length: 7\r\n"+
		"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nForwarded: for=203.0.113.7\r\n\r\npayload")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "POST /vm/keeper/{a}/b%2fc?q=1;c=3&z=%zz&a=x+y host=example.test by=node1 key=false xff=[203.0.113.7, 127.0.0.1] xfp=https xfh= fwd=for=203.0.113.7 id=true body=payload"
	if resp.StatusCode != http.StatusCreated || string(body) != "made" || resp.Header.Get("X-Seen") != want {
		t.Fatalf("forwarded: %d %q, the owner saw\n%q, want 201 \"made\" and\n%q", resp.StatusCode, body, resp.Header.Get("X-Seen"), want)
	}

	// Streamed: the first line arrives while the owner holds the rest.
	resp, err = (&http.Client{Timeout: 10 * time.Second}).Get(front + "/vm/keeper/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("the first line of a streamed answer: %q %v", line, err)
	}
}

// get requests path from front with header, and returns the response and
// its body.
func get(t *testing.T, front, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", front+path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// What is not forwarded: a request a node forwarded already (one hop), to
// a node whose address is unknown or whose heartbeat stopped: the 503
// naming the owner. An owner that cannot be reached is a 503 too, one
// that fails to answer a 502, one past the program's time limit a 504; a
// body larger than the limit is refused here.
func TestForwardingRefusals(t *testing.T) {
	var hits atomic.Int32
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer owner.Close()
	front := forwardingFront(t, forwarding{peer: at(owner.URL)})
	resp, _ := get(t, front, "/vm/keeper/", http.Header{ForwardedBy: {"node3"}})
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Ferry-Node") != "node2" || hits.Load() != 0 {
		t.Errorf("a request forwarded already: %d naming %q, %d reached the owner; want 503 naming node2, none", resp.StatusCode, resp.Header.Get("X-Ferry-Node"), hits.Load())
	}
	for what, o := range map[string]forwarding{
		"an owner whose address is unknown": {peer: func(string) string { return "" }},
		"an owner whose heartbeat stopped":  {peer: at(owner.URL), live: func(string) bool { return false }},
	} {
		resp, _ := get(t, forwardingFront(t, o), "/vm/keeper/", nil)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Ferry-Node") != "node2" {
			t.Errorf("%s: %d naming %q, want 503 naming node2", what, resp.StatusCode, resp.Header.Get("X-Ferry-Node"))
		}
	}
	if hits.Load() != 0 {
		t.Errorf("%d requests reached the owner", hits.Load())
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String()
	ln.Close()
	resp, body := get(t, forwardingFront(t, forwarding{peer: at(gone)}), "/vm/keeper/", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Ferry-Node") != "node2" || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "cannot be reached") {
		t.Errorf("an owner that cannot be reached: %d naming %q: %s, want 503 naming node2 with Retry-After", resp.StatusCode, resp.Header.Get("X-Ferry-Node"), body)
	}

	// An owner that takes the connection and never answers (a frozen
	// agent): the program's time limit ends the wait.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	resp, body = get(t, forwardingFront(t, forwarding{peer: at(hung.Addr().String()), seconds: 0.5}), "/vm/keeper/", nil)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("an owner that never answers, with a time limit: %d %s, want 504", resp.StatusCode, body)
	}
	closing, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer closing.Close()
	go func() {
		for {
			c, err := closing.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	resp, body = get(t, forwardingFront(t, forwarding{peer: at(closing.Addr().String())}), "/vm/keeper/", nil)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "did not answer") {
		t.Errorf("an owner that closes the connection: %d %s, want 502", resp.StatusCode, body)
	}

	limited := forwardingFront(t, forwarding{peer: at(owner.URL), maxBody: 10})
	post, err := http.Post(limited+"/vm/keeper/", "text/plain", strings.NewReader("more than ten bytes"))
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusRequestEntityTooLarge || hits.Load() != 0 {
		t.Errorf("a body over the limit: %d, %d reached the owner; want 413, none", post.StatusCode, hits.Load())
	}
}

// A chunked request body closes the client's connection after the answer
// (as the relay does: RFC 9112 6.1), and a body that breaks off is the
// client's 400, not the owner's fault.
func TestForwardingChunkedBodies(t *testing.T) {
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	defer owner.Close()
	front := forwardingFront(t, forwarding{peer: at(owner.URL)})
	send := func(raw string) (*http.Response, string) {
		conn := dialFront(t, front, 10*time.Second)
		io.WriteString(conn, raw)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	resp, _ := send("POST /vm/keeper/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n")
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("a chunked body: %d, close %t; want 200 and the connection closed", resp.StatusCode, resp.Close)
	}
	resp, body := send("POST /vm/keeper/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbody\r\n0\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "malformed or incomplete request body") {
		t.Errorf("a malformed chunked body: %d %s, want 400", resp.StatusCode, body)
	}
}

// An upgrade (a websocket) is forwarded too: after the owner's 101 the
// bytes pass both ways.
func TestForwardingAnUpgrade(t *testing.T) {
	owner := echoUpgradeOwner(t)
	rt, front := forwardingRouter(t, forwarding{peer: at(owner.URL)})
	conn := dialFront(t, front, 10*time.Second)
	io.WriteString(conn, "GET /vm/keeper/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(conn, "hello\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo: hello\n" {
		t.Fatalf("after the upgrade: %q %v", line, err)
	}
	conn.Close()
	// Recorded once the tunnel ends: 101, answered by node2.
	if got := recorded(rt); len(got) != 1 || got[0].Status != http.StatusSwitchingProtocols || got[0].Node != "node2" {
		t.Fatalf("recorded %+v, want one request, 101, on node2", got)
	}
}

// node is one agent's router over fake VMs, for the tests of two nodes.
type node struct {
	router  *Router
	manager *lifecycle.Manager
	url     string
}

// twoNodes serves persistent program "keeper" on node2 (its VM running)
// with node1 in front, both with the forwarding key key2 and key1.
func twoNodes(t *testing.T, key1, key2 []byte) (node1, node2 *node) {
	t.Helper()
	var addr2 string
	peer := func(n string) string {
		if n == "node2" {
			return addr2
		}
		return ""
	}
	start := func(name string, here bool, key []byte) *node {
		manager, programs := persistentKeeper(t, &backendtest.Backend{Handler: backendtest.Echo}, 0)
		forward := NewForwarder(name, peer, func() []byte { return key }, nil, nil)
		t.Cleanup(forward.Close)
		rt := &Router{Programs: programs, Manager: manager, Log: slog.New(slog.DiscardHandler), Forward: forward,
			Metrics: metrics.New(func() int { return 0 }),
			Owner: func(string) (bool, string) {
				if here {
					return true, ""
				}
				return false, "node2"
			}}
		srv := httptest.NewServer(rt)
		t.Cleanup(srv.Close)
		return &node{router: rt, manager: manager, url: srv.URL}
	}
	node1, node2 = start("node1", false, key1), start("node2", true, key2)
	addr2 = strings.TrimPrefix(node2.url, "http://")
	inst, err := node2.manager.Acquire(context.Background(), node2.router.Programs.Route("keeper").Program)
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
	return node1, node2
}

// An event (a request the agent makes itself, to a path under
// ReservedPrefix) for a persistent program of another node reaches it
// there with the cluster's key, which the program never sees; a client
// cannot reach that path, with no key or a wrong one; nodes whose keys
// differ forward nothing.
func TestForwardingAnEvent(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	node1, _ := twoNodes(t, key, key)
	event := func(n *node) (int, backendtest.Seen) {
		req := httptest.NewRequest("POST", "http://localhost/_ferry/event", strings.NewReader(`{"topic": "t"}`))
		rec := httptest.NewRecorder()
		n.router.ServeProgram(rec, req, "keeper")
		var seen backendtest.Seen
		json.Unmarshal(rec.Body.Bytes(), &seen)
		return rec.Code, seen
	}
	status, seen := event(node1)
	if want := (backendtest.Seen{Method: "POST", Path: "/_ferry/event", RawPath: "/_ferry/event", Host: "localhost", BodyBytes: 14, FerryHeaders: "x-ferry-forwarded-by"}); status != 200 || seen != want {
		t.Fatalf("an event forwarded to node2: %d %+v, want 200 %+v", status, seen, want)
	}

	_, node2 := twoNodes(t, key, key)
	for _, header := range []string{"", "00", hex.EncodeToString([]byte("0123456789abcdef0123456789abcdeX"))} {
		req, _ := http.NewRequest("POST", node2.url+AgentPrefix+"keeper/_ferry/event", strings.NewReader("{}"))
		if header != "" {
			req.Header.Set(KeyHeader, header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("a client's request to the agent's path with key %q: %d, want 404", header, resp.StatusCode)
		}
	}

	other, _ := twoNodes(t, key, []byte("another key of thirty-two bytes!"))
	if status, _ := event(other); status != http.StatusNotFound {
		t.Errorf("an event forwarded with another cluster's key: %d, want node2's 404", status)
	}
	// A client's request forwarded between two real routers, also from
	// a node that does not know the key yet: clients' requests carry
	// none, and only the agent's own wait for it.
	keyless, _ := twoNodes(t, nil, key)
	for _, n := range []*node{node1, keyless} {
		resp, err := http.Get(n.url + "/vm/keeper/x?y=1")
		if err != nil {
			t.Fatal(err)
		}
		seen = backendtest.Seen{}
		json.NewDecoder(resp.Body).Decode(&seen)
		resp.Body.Close()
		if want := (backendtest.Seen{Method: "GET", RootPath: "/vm/keeper", Path: "/x", RawPath: "/x", Query: "y=1", Host: strings.TrimPrefix(n.url, "http://"), FerryHeaders: "x-ferry-forwarded-by"}); resp.StatusCode != 200 || seen != want {
			t.Errorf("a client's request through %s: %d %+v, want 200 %+v", n.url, resp.StatusCode, seen, want)
		}
	}
	if status, _ := event(keyless); status != http.StatusServiceUnavailable {
		t.Errorf("an event from a node that does not know the key yet: %d, want 503 (retried)", status)
	}
}

// The program's time limit bounds a forwarded upgrade only until the
// owner's 101: the switched connection lives on, as on the owner.
func TestForwardedUpgradeOutlivesTheTimeLimit(t *testing.T) {
	owner := echoUpgradeOwner(t)
	front := forwardingFront(t, forwarding{peer: at(owner.URL), seconds: 0.3})
	conn := dialFront(t, front, 10*time.Second)
	io.WriteString(conn, "GET /vm/keeper/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	time.Sleep(time.Second) // past the limit
	io.WriteString(conn, "still here\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo: still here\n" {
		t.Fatalf("after the time limit: %q %v", line, err)
	}
}

// A node that stops beating while a hop waits on it (a frozen agent
// holds the connection open) ends the hop: 503 naming it. A chunked
// request answered with an error closes the connection too.
func TestForwardingToANodeThatStopsBeating(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	var silent atomic.Bool
	front := forwardingFront(t, forwarding{peer: at(hung.Addr().String()), live: func(string) bool { return !silent.Load() }})
	time.AfterFunc(300*time.Millisecond, func() { silent.Store(true) })
	conn := dialFront(t, front, 20*time.Second)
	io.WriteString(conn, "POST /vm/keeper/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Ferry-Node") != "node2" || !strings.Contains(string(body), "stopped answering") || !resp.Close {
		t.Fatalf("a hop to a node that stopped beating: %d naming %q, close %t: %s; want 503 naming node2, closed", resp.StatusCode, resp.Header.Get("X-Ferry-Node"), resp.Close, body)
	}
}

// The agent's path takes only requests with the cluster's key, which no
// program sees under any spelling; a node that does not know the key, or
// the program, yet answers 503 (a trigger retries it).
func TestTheAgentPath(t *testing.T) {
	_, node2 := twoNodes(t, testKey, testKey)
	post := func(n *node, path string, header http.Header) (int, backendtest.Seen) {
		req, _ := http.NewRequest("POST", n.url+path, strings.NewReader("{}"))
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var seen backendtest.Seen
		json.NewDecoder(resp.Body).Decode(&seen)
		return resp.StatusCode, seen
	}
	key := hex.EncodeToString(testKey)
	status, seen := post(node2, AgentPrefix+"keeper/_ferry/event", http.Header{KeyHeader: {key}, "X_ferry_cluster_key": {key}, ForwardedBy: {"node1"}})
	if status != 200 || seen.Path != "/_ferry/event" || seen.FerryHeaders != "x-ferry-forwarded-by" {
		t.Errorf("with the key: %d %+v, want 200 at /_ferry/event with no key under any spelling", status, seen)
	}
	if status, _ := post(node2, AgentPrefix+"nobody/_ferry/event", http.Header{KeyHeader: {key}}); status != http.StatusServiceUnavailable {
		t.Errorf("a program this node does not know: %d, want 503", status)
	}
	_, keyless := twoNodes(t, testKey, nil)
	if status, _ := post(keyless, AgentPrefix+"keeper/_ferry/event", http.Header{KeyHeader: {key}}); status != http.StatusServiceUnavailable {
		t.Errorf("a node that does not know the key yet: %d, want 503", status)
	}
}

// dialFront opens a connection to front (a URL), for requests written by
// hand, with a deadline of d on everything it does; it is closed with the
// test.
func dialFront(t *testing.T, front string, d time.Duration) net.Conn {
	t.Helper()
	conn := dial(t, strings.TrimPrefix(front, "http://"))
	conn.SetDeadline(time.Now().Add(d))
	return conn
}

// echoUpgradeOwner stands for the owner's agent answering an upgrade: 101,
// then one line read and sent back as "echo: LINE". It is closed with the
// test.
func echoUpgradeOwner(t *testing.T) *httptest.Server {
	return upgradeOwner(t, "echo")
}

// upgradeOwner is echoUpgradeOwner switching to protocol, whatever the
// request asked for.
func upgradeOwner(t *testing.T, protocol string) *httptest.Server {
	t.Helper()
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + protocol + "\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo: " + line)
		brw.Flush()
	}))
	t.Cleanup(owner.Close)
	return owner
}

// A request forwarded to the node that runs its program is counted once
// over the cluster: in ferry_requests_total (and the durations) there, in
// ferry_requests_forwarded_total, naming that node, here; both nodes'
// recent requests show it, the forwarding node's with the node that ran it.
func TestForwardedRequestsAreCountedOnce(t *testing.T) {
	node1, node2 := twoNodes(t, testKey, testKey)
	resp, err := http.Get(node1.url + "/vm/keeper/hello")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	m1, m2 := metricsText(node1.router), metricsText(node2.router)
	if want := `ferry_requests_forwarded_total{node="node2",program="keeper",status="200"} 1`; !strings.Contains(m1, want) {
		t.Errorf("node1's metrics lack %s", want)
	}
	for _, not := range []string{`ferry_requests_total{program="keeper"`, `ferry_request_duration_seconds_count{program="keeper"}`} {
		if strings.Contains(m1, not) {
			t.Errorf("node1 counts the forwarded request as its own: %s", not)
		}
	}
	for _, want := range []string{`ferry_requests_total{program="keeper",status="200"} 1`, `ferry_request_duration_seconds_count{program="keeper"} 1`} {
		if !strings.Contains(m2, want) {
			t.Errorf("node2's metrics lack %s", want)
		}
	}
	if strings.Contains(m2, `ferry_requests_forwarded_total{`) {
		t.Error("node2, which ran it, counts it as forwarded")
	}
	r1, r2 := node1.router.Metrics.Recent(), node2.router.Metrics.Recent()
	if len(r1) != 1 || r1[0].Node != "node2" || r1[0].Status != 200 || len(r2) != 1 || r2[0].Node != "" || r2[0].ID != r1[0].ID {
		t.Errorf("recent requests: node1 %+v, node2 %+v", r1, r2)
	}
}

// An owner that switches to another protocol than the one asked for is
// refused with a 502, and that, not 101, is what is recorded.
func TestForwardedUpgradeRefusedIsRecordedAsRefused(t *testing.T) {
	owner := upgradeOwner(t, "other")
	rt, front := forwardingRouter(t, forwarding{peer: at(owner.URL)})
	conn := dialFront(t, front, 10*time.Second)
	defer conn.Close()
	io.WriteString(conn, "GET /vm/keeper/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("a switch to another protocol: %v %v, want 502", resp, err)
	}
	if got := recorded(rt); len(got) != 1 || got[0].Status != http.StatusBadGateway || got[0].Node != "node2" {
		t.Fatalf("recorded %+v, want one request, 502, on node2", got)
	}
}

// A request whose owner cannot be reached ran on no node: the forwarding
// node's 503 is counted in ferry_requests_total (and the durations) as its
// own, and in ferry_requests_forwarded_total naming the node it could not
// reach, so that the cluster's sum of ferry_requests_total sees it.
func TestUnreachableOwnerIsCountedWhereItWasAnswered(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String()
	ln.Close()
	rt, front := forwardingRouter(t, forwarding{peer: at(gone)})
	if resp, body := get(t, front, "/vm/keeper/", nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("an owner that cannot be reached: %d %s, want 503", resp.StatusCode, body)
	}
	requireMetrics(t, rt,
		`ferry_requests_total{program="keeper",status="503"} 1`,
		`ferry_request_duration_seconds_count{program="keeper"} 1`,
		`ferry_requests_forwarded_total{node="node2",program="keeper",status="503"} 1`)
}

// A program's time limit that runs out while the owner is still being
// dialled ends a request the owner never got: the 504 is counted where it
// was answered, as for an owner that cannot be reached.
func TestTimeLimitDuringTheDialIsCountedWhereItWasAnswered(t *testing.T) {
	rt, front := forwardingRouter(t, forwarding{peer: at(unansweredDialAddr(t)), seconds: 0.5})
	if resp, body := get(t, front, "/vm/keeper/", nil); resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("a dial that outlasts the time limit: %d %s, want 504", resp.StatusCode, body)
	}
	requireMetrics(t, rt,
		`ferry_requests_total{program="keeper",status="504"} 1`,
		`ferry_requests_forwarded_total{node="node2",program="keeper",status="504"} 1`)
}

// recorded is rt's recent requests once there is one (a request is
// recorded when its handler returns, after the client has its answer),
// or none after 10 s.
func recorded(rt *Router) []metrics.RequestRecord {
	deadline := time.Now().Add(10 * time.Second)
	for len(rt.Metrics.Recent()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return rt.Metrics.Recent()
}

// metricsText is what rt's /metrics serves.
func metricsText(rt *Router) string {
	rec := httptest.NewRecorder()
	rt.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// requireMetrics fails the test for each line of want that rt's /metrics
// lacks.
func requireMetrics(t *testing.T, rt *Router, want ...string) {
	t.Helper()
	text := metricsText(rt)
	for _, line := range want {
		if !strings.Contains(text, line) {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// unansweredDialAddr is a loopback address whose connections are never
// set up: a listener with no room in its accept queue, which it never
// empties, so that the kernel drops new SYNs and a dial waits. It checks
// that a dial does wait.
func unansweredDialAddr(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
	for range 8 { // fill the queue; the first dial that waits proves it full
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("a listener with a full accept queue still completes connections here; nothing to test")
	return ""
}
