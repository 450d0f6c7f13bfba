package front

// Forwarding in a cluster: a persistent program runs on one node at a
// time, and a request for it that reaches another node is relayed, as it
// came, to the public listener of the node that runs it, so that clients
// (and the load balancer in front of the cluster) may use any node.

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"time"

	"github.com/ferry-vm/ferry/host/relay"
)

// ForwardedBy is the header a forwarded request carries: the name of the
// node that forwarded it. A node does not forward such a request again (it
// answers 503 when the program has moved meanwhile), so that two nodes
// with different views of the placement cannot pass a request back and
// forth.
const ForwardedBy = "X-Ferry-Forwarded-By"

// A request the agent makes itself to a persistent program of another
// node (a trigger's event, to a path under ReservedPrefix, which clients
// may not reach) goes to that node's public listener at AgentPrefix +
// program id + path, with the cluster's forwarding key in KeyHeader (hex).
// That node takes it only with the key, which it removes before the
// program sees the request; without, the path is unknown (404).
const (
	AgentPrefix = "/_ferry/agent/"
	KeyHeader   = "X-Ferry-Cluster-Key"
)

// Forwarding's bounds: how long a connection to another node may take to
// open, and how many idle ones are kept per node.
const (
	forwardDialTimeout   = 5 * time.Second
	forwardIdlePerNode   = 16
	forwardIdleTimeout   = 90 * time.Second
	forwardDialKeepAlive = 30 * time.Second
)

// Forwarder relays requests for persistent programs to the node that
// runs them.
type Forwarder struct {
	node      string                   // this node's name
	peer      func(node string) string // a node's public host:port, "" unknown
	key       func() []byte            // the cluster's forwarding key, nil unknown
	transport *http.Transport
	log       *slog.Logger
}

// NewForwarder returns the forwarder of the node named node; peer says
// where another node serves programs ("" when it has not said), key is
// the cluster's key for the agent's own requests (nil until known: they
// are then not forwarded, nor taken).
func NewForwarder(node string, peer func(node string) string, key func() []byte, log *slog.Logger) *Forwarder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dialer := &net.Dialer{Timeout: forwardDialTimeout, KeepAlive: forwardDialKeepAlive}
	return &Forwarder{node: node, peer: peer, key: key, log: log, transport: &http.Transport{
		// Proxy stays nil: the nodes talk directly, whatever
		// HTTP_PROXY the agent's environment has.
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: forwardIdlePerNode,
		IdleConnTimeout:     forwardIdleTimeout,
		// The program's answer is passed on as it came: no gzip asked
		// for on its behalf.
		DisableCompression: true,
	}}
}

// Close closes the forwarder's idle connections.
func (f *Forwarder) Close() { f.transport.CloseIdleConnections() }

// serve relays r, a client's request for a persistent program that runs
// on node, to that node's public listener as it came, and reports true;
// false (nothing written) when r was forwarded already or node's address
// is unknown: the caller answers 503.
func (f *Forwarder) serve(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, node string) bool {
	return f.relay(w, r, ex, node, func(*httputil.ProxyRequest) {})
}

// serveAgent relays r, a request the agent makes itself (a trigger's
// event) to the persistent program id that runs on node, to that node
// under AgentPrefix with the cluster's key (KeyHeader), which that node
// checks (Router.serveFromNode): the agent's paths (ReservedPrefix) are
// refused to clients. It reports false (nothing written) as serve does,
// and when the key is not known yet.
func (f *Forwarder) serveAgent(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, node, id string) bool {
	key := f.key()
	if len(key) == 0 {
		return false
	}
	return f.relay(w, r, ex, node, func(pr *httputil.ProxyRequest) {
		pr.Out.URL.Path = AgentPrefix + id + pr.In.URL.Path
		pr.Out.URL.RawPath = ""
		pr.Out.Header.Set(KeyHeader, hex.EncodeToString(key))
	})
}

// relay relays r to node's public listener, the outbound request edited
// by rewrite, unless r was forwarded already or node's address is
// unknown.
func (f *Forwarder) relay(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, node string, rewrite func(*httputil.ProxyRequest)) bool {
	if node == "" || r.Header.Get(ForwardedBy) != "" {
		return false
	}
	addr := f.peer(node)
	if addr == "" {
		return false
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", addr
			pr.Out.Host = pr.In.Host // routing by host name works there as here
			pr.SetXForwarded()
			pr.Out.Header.Set(ForwardedBy, f.node)
			// Both nodes' log lines name the request by one id.
			pr.Out.Header.Set("X-Request-Id", ex.ID)
			rewrite(pr)
		},
		Transport:     f.transport,
		FlushInterval: -1, // a streamed answer streams on
		ErrorLog:      slog.NewLogLogger(f.log.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil || errors.Is(err, http.ErrAbortHandler) {
				return // the client left: nobody to answer
			}
			w.Header().Set("X-Ferry-Node", node)
			reject(w, r, ex, http.StatusBadGateway, "the node that runs this persistent program did not answer", "node", node, "address", addr, "err", err)
		},
	}
	if ex.Log != nil {
		ex.Log.Debug("forwarding a request for a persistent program", append(ex.LogAttrs(), "node", node, "address", addr)...)
	}
	proxy.ServeHTTP(w, r)
	return true
}

// validKey reports whether a request carries the cluster's forwarding
// key (compared in constant time).
func (f *Forwarder) validKey(r *http.Request) bool {
	key := f.key()
	got, err := hex.DecodeString(r.Header.Get(KeyHeader))
	return len(key) > 0 && err == nil && subtle.ConstantTimeCompare(got, key) == 1
}
