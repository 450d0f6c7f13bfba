// Package front is the host agent's HTTP front: it routes each request to
// a program (/vm/{id}, a host name whose first label is the id, or, for
// host-agent run, one program at /), bounds the program's requests in
// flight, acquires its VM through the lifecycle manager (booting it if
// needed) and hands the request to the relay. It also holds the deployed
// programs and the timeouts of the agent's listeners.
package front

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/host/relay"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Route is one program as the router sees it.
type Route struct {
	Program *lifecycle.Program
	HTTP    bool          // reachable over HTTP (the manifest's on.http)
	Timeout time.Duration // per request (resources.seconds); 0: none
	// Limiter bounds the program's requests in flight; nil: no bound.
	Limiter *Limiter
}

// Router serves many programs: /vm/{id}/... (root_path /vm/{id}) and hosts
// whose first label is the program id. /healthz answers "ok" for the agent
// itself (for load balancers; it names no program); anything else is a 404
// JSON error. The metrics, which name every program, are served on the
// admin and metrics listeners only. With Root set, every request goes to
// that one program instead, as it came (host-agent run).
type Router struct {
	Programs *Programs
	Manager  *lifecycle.Manager
	Metrics  *metrics.Metrics // optional
	MaxBody  int64            // bytes of a request body; 0: no limit
	Log      *slog.Logger
	// Root, when set, is the id of the program that gets every request at
	// / (root_path empty, the path as received, /healthz included).
	Root string
	// Owner, when set, says where a persistent program runs in a cluster:
	// here (under a valid lease), or on the node named. A persistent
	// program is served only where it runs, so that it never runs twice;
	// elsewhere the request is forwarded there (Forward), or answered 503
	// naming its node.
	Owner func(programID string) (here bool, node string)
	// Forward, when set with Owner, relays a request for a persistent
	// program that runs on another node to that node.
	Forward *Forwarder
}

// ServeHTTP implements http.Handler.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The exchange and the metrics' status recorder: one allocation.
	x := &struct {
		ex  relay.Exchange
		rec metrics.StatusRecorder
	}{ex: relay.Exchange{ID: relay.RequestID(r), MaxBody: rt.MaxBody, Log: rt.Log}}
	ex := &x.ex
	if rt.Forward != nil && strings.HasPrefix(r.URL.Path, AgentPrefix) {
		rt.serveFromNode(w, r, ex)
		return
	}
	if !asciiTarget(r.RequestURI) {
		// RFC 9112 §3.2: the target is ASCII. uvicorn and hypercorn
		// answer 400 and close; net/http lets it through.
		w.Header().Set("Connection", "close")
		reject(w, r, ex, http.StatusBadRequest, "invalid request target: bytes outside ASCII")
		return
	}
	relay.TrimFragment(r)
	id, root, path, rawPath, found := rt.match(r)
	if !found {
		if r.URL.Path == "/healthz" {
			metrics.Healthz(w, r)
			return
		}
		reject(w, r, ex, http.StatusNotFound, "no such program", "path", r.URL.Path, "host", r.Host)
		return
	}
	route := rt.Programs.Route(id)
	if route == nil || !route.HTTP {
		reject(w, r, ex, http.StatusNotFound, "no such program", "program", id)
		return
	}
	if reserved(path) {
		reject(w, r, ex, http.StatusNotFound, "reserved for the agent's events", "program", id, "path", path)
		return
	}
	if rt.Metrics != nil {
		rec := &x.rec
		rec.ResponseWriter = w
		start := time.Now()
		defer func() {
			status := rec.Status
			if status == 0 && r.Context().Err() != nil {
				status = StatusClientClosed
			}
			rt.Metrics.Request(metrics.RequestRecord{Time: start, Program: id, Method: r.Method, Path: r.URL.Path, Status: status, Took: time.Since(start), ID: ex.ID, AppID: ex.AppID, Node: rec.Node, Unreached: rec.Unreached})
		}()
		w = rec
	}
	ex.RootPath, ex.Path, ex.RawPath, ex.Timeout = root, path, rawPath, route.Timeout
	if route.Program.Persistent && rt.Owner != nil {
		rt.servePersistent(w, r, ex, route, func(node string) bool {
			return rt.Forward != nil && rt.Forward.serve(w, r, ex, node)
		})
		return
	}
	serveProgram(w, r, ex, rt.Manager, route.Program, route.Limiter)
}

// StatusClientClosed is the status the metrics and the recent requests
// record for a request whose client left before it was answered (nginx's
// 499): nothing was sent.
const StatusClientClosed = 499

// servePersistent serves a persistent program of a cluster: only where it
// runs, on the VM its supervisor runs (a request never starts one: that
// would be a second copy), and only while this node's lease holds, checked
// again once the VM is held. Elsewhere forward is asked to relay the
// request to the node that runs it; when it does not, the answer is 503.
func (rt *Router) servePersistent(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, route *Route, forward func(node string) bool) {
	p := route.Program
	notHere := func(node string) {
		if forward(node) {
			return
		}
		if node != "" {
			w.Header().Set("X-Ferry-Node", node)
		}
		reject(w, r, ex, http.StatusServiceUnavailable, "this persistent program does not run on this node", "program", p.ID, "node", node)
	}
	if here, node := rt.Owner(p.ID); !here {
		notHere(node)
		return
	}
	release := func() {}
	if lim := route.Limiter; lim != nil {
		if !lim.Acquire(r.Context()) {
			if r.Context().Err() == nil {
				reject(w, r, ex, http.StatusServiceUnavailable, "the program is at its limit of concurrent requests; try again later", "program", p.ID)
			}
			return
		}
		release = lim.Release
	}
	inst, err := rt.Manager.AcquireRunning(r.Context(), p)
	if err != nil {
		release()
		if r.Context().Err() == nil {
			reject(w, r, ex, http.StatusServiceUnavailable, "the program is starting or restarting; try again later", "program", p.ID, "err", err)
		}
		return
	}
	if here, node := rt.Owner(p.ID); !here { // the lease may have run out while waiting
		// What this node held goes back before a forward, which may
		// last (a stream, a websocket).
		inst.Release()
		release()
		notHere(node)
		return
	}
	defer release()
	defer inst.Release()
	sess, done := inst.Pick()
	defer done()
	ex.Session = sess
	relay.ServeAny(w, r, ex, p.Interface)
}

// serveProgram relays a request to a program within its limit of requests
// in flight, starting its VM if needed.
func serveProgram(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, mgr *lifecycle.Manager, p *lifecycle.Program, lim *Limiter) {
	if lim != nil {
		if !lim.Acquire(r.Context()) {
			if r.Context().Err() != nil {
				return // the client left while waiting
			}
			reject(w, r, ex, http.StatusServiceUnavailable, "the program is at its limit of concurrent requests; try again later",
				"program", p.ID, "in_flight", lim.InFlight())
			return
		}
		defer lim.Release()
	}
	inst, err := mgr.Acquire(r.Context(), p)
	if errors.Is(err, lifecycle.ErrTooMany) {
		reject(w, r, ex, http.StatusServiceUnavailable, "the node is at capacity; try again later", "program", p.ID)
		return
	}
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left while the program started: nobody to answer
		}
		reject(w, r, ex, http.StatusBadGateway, "the program failed to start", "program", p.ID, "err", err)
		return
	}
	defer inst.Release()
	sess, done := inst.Pick()
	defer done()
	ex.Session = sess
	relay.ServeAny(w, r, ex, p.Interface)
}

// Target is where a request goes, as FastRoute finds it.
type Target struct {
	ID       string // the program
	RootPath string // the prefix the program is mounted under ("" or /vm/{id})
	Path     string // the path the program sees
	Route    *Route
}

// FastRoute routes a request for a front that serves ASGI programs
// itself (host/loopfront): the program a request with host and path
// (origin-form, no percent-escapes, no query) addresses, when the request
// is one such a front may relay directly to the program's workers. false
// means ServeHTTP must take it: no program matches, the program is not
// reachable over HTTP or is not ASGI, the path is reserved, a request
// from another node of the cluster, or a persistent program of a cluster
// (served only where its lease is held).
func (rt *Router) FastRoute(host, path string) (Target, bool) {
	if rt.Forward != nil && strings.HasPrefix(path, AgentPrefix) {
		return Target{}, false
	}
	var t Target
	switch {
	case rt.Root != "":
		t.ID, t.Path = rt.Root, path
	case strings.HasPrefix(path, "/vm/"):
		id, rest, _ := strings.Cut(path[len("/vm/"):], "/")
		t.ID, t.RootPath, t.Path = id, "/vm/"+id, "/"+rest
	default:
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		t.ID, _, _ = strings.Cut(host, ".")
		t.Path = path
	}
	if t.ID == "" {
		return Target{}, false
	}
	t.Route = rt.Programs.Route(t.ID)
	if t.Route == nil || !t.Route.HTTP || reserved(t.Path) || t.Route.Program.Interface != contract.InterfaceASGI ||
		(t.Route.Program.Persistent && rt.Owner != nil) {
		return Target{}, false
	}
	return t, true
}

// asciiTarget reports whether a request target has only ASCII bytes.
func asciiTarget(target string) bool {
	for i := 0; i < len(target); i++ {
		if target[i] >= 0x80 {
			return false
		}
	}
	return true
}

// match finds the program a request addresses, and the paths it sees:
// decoded, and raw as the client sent it (relay.RawPath).
func (rt *Router) match(r *http.Request) (id, root, path, rawPath string, ok bool) {
	if rt.Root != "" {
		return rt.Root, "", r.URL.Path, relay.RawPath(r), true
	}
	if rest, has := strings.CutPrefix(r.URL.Path, "/vm/"); has {
		id, path, _ = strings.Cut(rest, "/")
		path = "/" + path
		rawPath = "/"
		if rawRest, has := strings.CutPrefix(relay.RawPath(r), "/vm/"+id); has && rawRest != "" {
			rawPath = rawRest
		}
		return id, "/vm/" + id, path, rawPath, id != ""
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if label, _, _ := strings.Cut(host, "."); label != "" {
		if rt.Programs.Route(label) != nil {
			return label, "", r.URL.Path, relay.RawPath(r), true
		}
	}
	return "", "", "", "", false
}
