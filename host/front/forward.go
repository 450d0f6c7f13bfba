package front

// Forwarding in a cluster: a persistent program runs on one node at a
// time, and a request for it that reaches another node is relayed, as it
// came, to the public listener of the node that runs it, so that clients
// (and the load balancer in front of the cluster) may use any node.

import (
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
	transport *http.Transport
	log       *slog.Logger
}

// NewForwarder returns the forwarder of the node named node; peer says
// where another node serves programs ("" when it has not said).
func NewForwarder(node string, peer func(node string) string, log *slog.Logger) *Forwarder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dialer := &net.Dialer{Timeout: forwardDialTimeout, KeepAlive: forwardDialKeepAlive}
	return &Forwarder{node: node, peer: peer, log: log, transport: &http.Transport{
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

// serve relays r, for a persistent program that runs on node, to that
// node, and reports true; false (nothing written) when r was forwarded
// already or node's address is unknown: the caller answers 503.
func (f *Forwarder) serve(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, node string) bool {
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
