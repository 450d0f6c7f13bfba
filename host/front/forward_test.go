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
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/host/metrics"
)

// forwardingFront is the router of node1 for a persistent program that
// runs on node2, whose public listener is peer (a test server standing
// for node2's agent).
func forwardingFront(t *testing.T, peer func(node string) string) string {
	t.Helper()
	manager := lifecycle.New(lifecycle.Options{Backend: &backendtest.Backend{Handler: backendtest.Echo}, InitPath: "/nonexistent/init", IdleTimeout: -1})
	t.Cleanup(func() {
		manager.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		manager.StopAll(ctx)
	})
	programs := NewPrograms(manager)
	programs.ClusterPersists = true
	if err := programs.Deploy("keeper", &manifest.Program{Code: manifest.Code{Interface: "asgi", Entrypoint: "main:app", Path: "/srv/keeper"},
		On: manifest.On{HTTP: true, Persistent: true}}); err != nil {
		t.Fatal(err)
	}
	forward := NewForwarder("node1", peer, func() []byte { return nil }, nil)
	t.Cleanup(forward.Close)
	srv := httptest.NewServer(&Router{Programs: programs, Manager: manager, Log: slog.New(slog.DiscardHandler),
		Metrics: metrics.New(func() int { return 0 }),
		Owner:   func(string) (bool, string) { return false, "node2" }, Forward: forward})
	t.Cleanup(srv.Close)
	return srv.URL
}

// A request for a persistent program that runs on another node is relayed
// there as it came (method, path, query, Host, body), with the forwarding
// node named, and its answer comes back as the owner gave it, streamed.
func TestForwardingToTheOwner(t *testing.T) {
	release := make(chan struct{})
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen", fmt.Sprintf("%s %s host=%s by=%s for=%t id=%t body=%s", r.Method, r.RequestURI, r.Host,
			r.Header.Get(ForwardedBy), r.Header.Get("X-Forwarded-For") != "", r.Header.Get("X-Request-Id") != "", body))
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
	front := forwardingFront(t, func(node string) string {
		if node == "node2" {
			return strings.TrimPrefix(owner.URL, "http://")
		}
		return ""
	})

	req, _ := http.NewRequest("POST", front+"/vm/keeper/things?q=1", strings.NewReader("payload"))
	req.Host = "example.test"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "POST /vm/keeper/things?q=1 host=example.test by=node1 for=true id=true body=payload"
	if resp.StatusCode != http.StatusCreated || string(body) != "made" || resp.Header.Get("X-Seen") != want {
		t.Fatalf("forwarded: %d %q, the owner saw %q, want 201 \"made\" and %q", resp.StatusCode, body, resp.Header.Get("X-Seen"), want)
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

// A request forwarded once is not forwarded again, and a node whose
// address is unknown is not forwarded to: both are the 503 naming the
// owner. An owner that does not answer is a 502 naming it.
func TestForwardingRefusals(t *testing.T) {
	var hits atomic.Int32
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer owner.Close()
	front := forwardingFront(t, func(string) string { return strings.TrimPrefix(owner.URL, "http://") })
	req, _ := http.NewRequest("GET", front+"/vm/keeper/", nil)
	req.Header.Set(ForwardedBy, "node3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Ferry-Node") != "node2" || hits.Load() != 0 {
		t.Errorf("a request forwarded already: %d naming %q, %d reached the owner; want 503 naming node2, none", resp.StatusCode, resp.Header.Get("X-Ferry-Node"), hits.Load())
	}

	unknown := forwardingFront(t, func(string) string { return "" })
	resp, err = http.Get(unknown + "/vm/keeper/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Ferry-Node") != "node2" {
		t.Errorf("an owner whose address is unknown: %d naming %q, want 503 naming node2", resp.StatusCode, resp.Header.Get("X-Ferry-Node"))
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String()
	ln.Close()
	silent := forwardingFront(t, func(string) string { return gone })
	resp, err = http.Get(silent + "/vm/keeper/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Ferry-Node") != "node2" || !strings.Contains(string(body), "did not answer") {
		t.Errorf("an owner that does not answer: %d naming %q: %s, want 502 naming node2", resp.StatusCode, resp.Header.Get("X-Ferry-Node"), body)
	}
}

// An upgrade (a websocket) is forwarded too: after the owner's 101 the
// bytes pass both ways.
func TestForwardingAnUpgrade(t *testing.T) {
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo: " + line)
		brw.Flush()
	}))
	defer owner.Close()
	front := forwardingFront(t, func(string) string { return strings.TrimPrefix(owner.URL, "http://") })
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(front, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
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
		manager := lifecycle.New(lifecycle.Options{Backend: &backendtest.Backend{Handler: backendtest.Echo}, InitPath: "/nonexistent/init", IdleTimeout: -1})
		t.Cleanup(func() {
			manager.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			manager.StopAll(ctx)
		})
		programs := NewPrograms(manager)
		programs.ClusterPersists = true
		if err := programs.Deploy("keeper", &manifest.Program{Code: manifest.Code{Interface: "asgi", Entrypoint: "main:app", Path: "/srv/keeper"},
			On: manifest.On{HTTP: true, Persistent: true}}); err != nil {
			t.Fatal(err)
		}
		forward := NewForwarder(name, peer, func() []byte { return key }, nil)
		t.Cleanup(forward.Close)
		rt := &Router{Programs: programs, Manager: manager, Log: slog.New(slog.DiscardHandler), Forward: forward,
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
	// A client's request forwarded between two real routers.
	resp, err := http.Get(node1.url + "/vm/keeper/x?y=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(&seen)
	if want := (backendtest.Seen{Method: "GET", RootPath: "/vm/keeper", Path: "/x", RawPath: "/x", Query: "y=1", Host: strings.TrimPrefix(node1.url, "http://"), FerryHeaders: "x-ferry-forwarded-by"}); resp.StatusCode != 200 || seen != want {
		t.Errorf("a client's request through node1: %d %+v, want 200 %+v", resp.StatusCode, seen, want)
	}
}
