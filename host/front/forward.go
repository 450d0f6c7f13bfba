package front

// Forwarding in a cluster: a persistent program runs on one node at a
// time, and a request for it that reaches another node is relayed, as it
// came, to the public listener of the node that runs it, so that clients
// (and the load balancer in front of the cluster) may use any node.

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/host/relay"
)

// ForwardedBy is the header a forwarded request carries: the name of the
// node that forwarded it. A node does not forward such a request again (it
// answers 503 when the program has moved meanwhile), so that two nodes
// with different views of the placement cannot pass a request back and
// forth. It is informational: a client may send it too (and so only
// keeps its own request from being forwarded).
const ForwardedBy = "X-Ferry-Forwarded-By"

// A request the agent makes itself to a persistent program of another
// node (a trigger's event, to a path under ReservedPrefix, which clients
// may not reach) goes to that node's public listener at AgentPrefix +
// program id + path, with the cluster's forwarding key in KeyHeader (hex):
// that node checks and removes it; without it, that path is unknown
// (404). Only these requests carry the key, so that a node that does not
// know the path (an older agent) never passes it to a program.
const (
	AgentPrefix = "/_ferry/agent/"
	KeyHeader   = "X-Ferry-Cluster-Key"
)

// Forwarding's bounds: how long a connection to another node may take to
// open, how many idle ones are kept per node and for how long (less than
// the agents' own keep-alive, ConnLimits.IdleTimeout's default, so that
// the other node never closes one as it is being reused).
const (
	forwardDialTimeout   = 5 * time.Second
	forwardDialKeepAlive = 15 * time.Second
	forwardIdlePerNode   = 16
	forwardIdleTimeout   = 30 * time.Second
)

// Forwarder relays requests for persistent programs to the node that
// runs them.
type Forwarder struct {
	node   string                   // this node's name
	peer   func(node string) string // a node's public host:port, "" unknown
	key    func() []byte            // the cluster's forwarding key, nil unknown
	live   func(node string) bool   // whether node's heartbeat is current
	proxy  *httputil.ReverseProxy
	log    *slog.Logger
	closer func()
}

// hop is what the proxy needs of one forwarded request (in its context).
type hop struct {
	ex      *relay.Exchange
	node    string
	addr    string
	agent   string // the program id of a request the agent makes, else ""
	body    *bodyReader
	chunked bool // the client's body was chunked: close its connection after

	cancel   context.CancelCauseFunc
	deadline *time.Timer // the time limit, when there is one
	upgrade  bool        // the limit stops once the answer's head is in
	sent     atomic.Bool // the request's head went to the node: it may have run there
	// rec, when the router keeps metrics, learns that the node answered,
	// or could not be reached (and the 101 of an upgrade, which
	// ReverseProxy writes itself: switchOnHijack).
	rec *metrics.StatusRecorder
}

// Why a hop's context ends.
var (
	errHopTimeout = errors.New("the program's time limit ran out")
	errNodeSilent = errors.New("the node stopped beating")
)

// watchPeriod is how often a hop checks that its node still beats.
const watchPeriod = time.Second

// watch ends h's hop when its node stops beating; it returns the function
// that stops watching.
func (f *Forwarder) watch(h *hop) (stop func()) {
	if f.live == nil {
		return func() {}
	}
	var t *time.Timer
	var mu sync.Mutex
	stopped := false
	t = time.AfterFunc(watchPeriod, func() {
		if !f.live(h.node) {
			h.cancel(errNodeSilent)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			t.Reset(watchPeriod)
		}
	})
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		t.Stop()
	}
}

type hopKey struct{}

// NewForwarder returns the forwarder of the node named node; peer says
// where another node serves programs ("" when it has not said), key is
// the cluster's forwarding key (nil until known: the agent's own requests
// are then neither forwarded nor taken; clients' are forwarded, since
// they carry no key), live whether a node's heartbeat is current (a node
// that stopped beating is not forwarded to: its requests would hang).
func NewForwarder(node string, peer func(node string) string, key func() []byte, live func(node string) bool, logger *slog.Logger) *Forwarder {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dialer := &net.Dialer{Timeout: forwardDialTimeout, KeepAlive: forwardDialKeepAlive}
	transport := &http.Transport{
		// Proxy stays nil: the nodes talk directly, whatever
		// HTTP_PROXY the agent's environment has.
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: forwardIdlePerNode,
		IdleConnTimeout:     forwardIdleTimeout,
		// The program's answer is passed on as it came: no gzip asked
		// for on its behalf.
		DisableCompression: true,
	}
	f := &Forwarder{node: node, peer: peer, key: key, live: live, log: logger, closer: transport.CloseIdleConnections}
	f.proxy = &httputil.ReverseProxy{
		Rewrite:        f.rewrite,
		Transport:      transport,
		FlushInterval:  -1, // a streamed answer streams on
		ErrorLog:       log.New(io.Discard, "", 0),
		ModifyResponse: f.modifyResponse,
		ErrorHandler:   f.failed,
	}
	return f
}

// Close closes the forwarder's idle connections.
func (f *Forwarder) Close() { f.closer() }

// fromNode reports whether r carries the cluster's key, and removes it
// (under any spelling: X_Ferry_Cluster_Key too, which Go keeps apart but
// a program's framework may read as the same field).
func (f *Forwarder) fromNode(r *http.Request) bool {
	got, err := hex.DecodeString(r.Header.Get(KeyHeader))
	for name := range r.Header {
		if sameField(name, KeyHeader) {
			delete(r.Header, name)
		}
	}
	key := f.key()
	return len(key) > 0 && err == nil && subtle.ConstantTimeCompare(got, key) == 1
}

// sameField reports whether a header name is field, reading "_" as "-"
// and ignoring case, as CGI-style frameworks (Django, WSGI) do.
func sameField(name, field string) bool {
	if len(name) != len(field) {
		return false
	}
	for i := 0; i < len(name); i++ {
		a, b := name[i], field[i]
		if a == '_' {
			a = '-'
		}
		if a|0x20 != b|0x20 {
			return false
		}
	}
	return true
}

// serve relays r, a client's request for a persistent program that runs
// on node, to that node's public listener as it came, and reports true;
// false (nothing written) when it cannot be forwarded: the caller answers
// 503.
func (f *Forwarder) serve(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, node string) bool {
	return f.relay(w, r, &hop{ex: ex, node: node})
}

// serveAgent relays r, a request the agent makes itself (a trigger's
// event) to the persistent program id that runs on node, to that node
// under AgentPrefix. It reports false as serve does.
func (f *Forwarder) serveAgent(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, node, id string) bool {
	return f.relay(w, r, &hop{ex: ex, node: node, agent: id})
}

// relay relays r as h says, unless it cannot be: r was forwarded already
// (one hop only), node is this one or unknown, its address is not known
// yet, or its heartbeat stopped; or r is the agent's own and the
// cluster's key, which only those hops carry, is not known yet.
func (f *Forwarder) relay(w http.ResponseWriter, r *http.Request, h *hop) bool {
	if h.node == "" || h.node == f.node || r.Header.Get(ForwardedBy) != "" || (h.agent != "" && len(f.key()) == 0) {
		return false
	}
	if h.addr = f.peer(h.node); h.addr == "" || (f.live != nil && !f.live(h.node)) {
		return false
	}
	if h.ex.MaxBody > 0 && r.ContentLength > h.ex.MaxBody {
		reject(w, r, h.ex, http.StatusRequestEntityTooLarge, "request body too large", "content-length", r.ContentLength)
		return true
	}
	ctx, cancel := context.WithCancelCause(context.WithValue(r.Context(), hopKey{}, h))
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteHeaders: func() { h.sent.Store(true) }})
	defer cancel(nil)
	h.cancel = cancel
	if h.ex.Timeout > 0 {
		// The program's time limit bounds the hop as it bounds the
		// exchange on the node that runs it: all of it, but for an
		// upgrade (a websocket) only the wait for the answer's head.
		h.deadline = time.AfterFunc(h.ex.Timeout, func() { cancel(errHopTimeout) })
		defer h.deadline.Stop()
		h.upgrade = r.Header.Get("Upgrade") != ""
	}
	// A node that stops beating (a frozen agent still accepts
	// connections) ends the hops to it.
	stopWatch := f.watch(h)
	defer stopWatch()
	r = r.WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		h.body = &bodyReader{ReadCloser: r.Body}
		r.Body = h.body
	}
	h.chunked = len(r.TransferEncoding) > 0
	if h.ex.Log != nil {
		h.ex.Log.Debug("forwarding a request for a persistent program", append(h.ex.LogAttrs(), "node", h.node, "address", h.addr)...)
	}
	if rec, ok := w.(*metrics.StatusRecorder); ok {
		h.rec, rec.Node = rec, h.node
		if r.Header.Get("Upgrade") != "" {
			w = switchOnHijack{rec}
		}
	}
	f.proxy.ServeHTTP(w, r)
	return true
}

// rewrite makes the outbound request of a hop: to the node's address, the
// target as the client sent it (path and query byte for byte), the
// client's Host and headers, and the forwarding headers.
func (f *Forwarder) rewrite(pr *httputil.ProxyRequest) {
	h := pr.In.Context().Value(hopKey{}).(*hop)
	pr.Out.URL.Scheme, pr.Out.URL.Host = "http", h.addr
	pr.Out.Host = pr.In.Host // routing by host name works there as here
	// ReverseProxy cleaned the query (re-encoded, ";" pairs dropped):
	// the client's, as sent.
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	if h.agent != "" {
		pr.Out.URL.Path, pr.Out.URL.RawPath = AgentPrefix+h.agent+pr.In.URL.Path, ""
		pr.Out.Header.Set(KeyHeader, hex.EncodeToString(f.key()))
	} else if raw := relay.RawPath(pr.In); strings.HasPrefix(raw, "/") && !strings.HasPrefix(raw, "//") {
		// The path as the client sent it, bytes Go would re-encode
		// (such as "{" or an encoded slash) included. (One that starts
		// with "//" cannot be sent so: it would read as a host.)
		pr.Out.URL.Opaque = raw
	}
	// The client's forwarding headers pass as they came (ReverseProxy
	// removed them); X-Forwarded-For gets this node's view of its peer at
	// its end.
	for _, name := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
		if v := pr.In.Header.Values(name); len(v) > 0 {
			pr.Out.Header[name] = v
		}
	}
	if client, _, err := net.SplitHostPort(pr.In.RemoteAddr); err == nil {
		if prior := pr.Out.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			client = strings.Join(prior, ", ") + ", " + client
		}
		pr.Out.Header.Set("X-Forwarded-For", client)
	}
	pr.Out.Header.Set(ForwardedBy, f.node)
	// Both nodes' log lines name the request by one id.
	pr.Out.Header.Set("X-Request-Id", h.ex.ID)
}

// modifyResponse takes the answer's head: an upgrade's time limit stops
// (the switched connection lives as long as it is used, as on the owner);
// the client's connection is closed after the answer to a request whose
// body was chunked, as the relay does (RFC 9112 6.1: a proxy in front may
// have framed it otherwise), the owner's own "Connection: close" being
// hop-by-hop.
func (f *Forwarder) modifyResponse(resp *http.Response) error {
	h := resp.Request.Context().Value(hopKey{}).(*hop)
	if h.upgrade && h.deadline != nil {
		h.deadline.Stop()
	}
	if h.chunked {
		resp.Header.Set("Connection", "close")
	}
	return nil
}

// failed answers a hop that failed: nothing when the client left; 400 or
// 408 when the client's body broke off (the client's fault, not the other
// node's); 504 past the program's time limit; 503 when the node could not
// be reached (it may be restarting: Retry-After); else 502.
func (f *Forwarder) failed(w http.ResponseWriter, r *http.Request, err error) {
	h := r.Context().Value(hopKey{}).(*hop)
	if h.chunked {
		w.Header().Set("Connection", "close")
	}
	if !h.sent.Load() && h.rec != nil {
		// The owner never got the request, whatever ended the hop before
		// it was written (the owner's absence, the time limit, the client
		// leaving): it ran nowhere.
		h.rec.Unreached = true
	}
	switch cause := context.Cause(r.Context()); {
	case h.body != nil && h.body.failed() != nil:
		relay.BadRequestBody(w, h.ex, h.body.failed())
		return
	case errors.Is(cause, errHopTimeout):
		relay.Error(w, h.ex, http.StatusGatewayTimeout, "the program did not answer in time", "timeout", h.ex.Timeout, "node", h.node)
		return
	case errors.Is(cause, errNodeSilent):
		w.Header().Set("X-Ferry-Node", h.node)
		reject(w, r, h.ex, http.StatusServiceUnavailable, "the node that runs this persistent program stopped answering; try again later", "node", h.node, "address", h.addr)
		return
	case r.Context().Err() != nil || errors.Is(err, http.ErrAbortHandler):
		return // the client left: nobody to answer
	}
	w.Header().Set("X-Ferry-Node", h.node)
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		reject(w, r, h.ex, http.StatusServiceUnavailable, "the node that runs this persistent program cannot be reached; try again later", "node", h.node, "address", h.addr, "err", err)
		return
	}
	reject(w, r, h.ex, http.StatusBadGateway, "the node that runs this persistent program did not answer", "node", h.node, "address", h.addr, "err", err)
}

// switchOnHijack records 101 Switching Protocols when ReverseProxy takes
// the client's connection over to answer an upgrade: it writes that head
// itself, without WriteHeader, once it has checked the owner's answer (an
// answer it refuses, such as a switch to another protocol than the one
// asked for, is a 502 through WriteHeader instead, and recorded so).
type switchOnHijack struct{ *metrics.StatusRecorder }

// Hijack implements http.Hijacker.
func (s switchOnHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(s.StatusRecorder).Hijack()
	if err == nil {
		s.Switched()
	}
	return conn, brw, err
}

// bodyReader remembers the error that ended the reading of a client's
// body (other than its end), to tell it from the other node's failure.
type bodyReader struct {
	io.ReadCloser
	mu  sync.Mutex
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
	}
	return n, err
}

func (b *bodyReader) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
