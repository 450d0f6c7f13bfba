package agent

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
)

// Route is one program as the router sees it.
type Route struct {
	Program *lifecycle.Program
	HTTP    bool          // reachable over HTTP (the manifest's on.http)
	Timeout time.Duration // per request (resources.seconds); 0: none
}

// Router serves many programs: /vm/{id}/... (root_path /vm/{id}) and hosts
// whose first label is the program id. /metrics and /healthz answer for the
// agent itself; anything else is a 404 JSON error.
type Router struct {
	Programs *Programs
	Manager  *lifecycle.Manager
	Metrics  *metrics.Metrics
	MaxBody  int64
	Log      *slog.Logger
}

// ServeHTTP implements http.Handler.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rq := &relay.Request{ID: relay.NewRequestID(), MaxBody: rt.MaxBody, Log: rt.Log}
	id, root, path, rawPath, found := rt.match(r)
	if !found {
		switch {
		case r.URL.Path == "/metrics" && rt.Metrics != nil:
			rt.Metrics.Handler().ServeHTTP(w, r)
		case r.URL.Path == "/healthz" && rt.Metrics != nil:
			rt.Metrics.Handler().ServeHTTP(w, r)
		default:
			relay.Error(w, rq, http.StatusNotFound, "no such program", "path", r.URL.Path, "host", r.Host)
		}
		return
	}
	route := rt.Programs.Route(id)
	if route == nil || !route.HTTP {
		relay.Error(w, rq, http.StatusNotFound, "no such program", "program", id)
		return
	}
	if rt.Metrics != nil {
		rec := &metrics.StatusRecorder{ResponseWriter: w}
		start := time.Now()
		defer func() { rt.Metrics.Request(id, rec.Status, time.Since(start)) }()
		w = rec
	}
	rq.RootPath, rq.Path, rq.RawPath, rq.Timeout = root, path, rawPath, route.Timeout
	inst, err := rt.Manager.Acquire(r.Context(), route.Program)
	if errors.Is(err, lifecycle.ErrTooMany) {
		relay.Error(w, rq, http.StatusServiceUnavailable, "the node is at capacity; try again later", "program", id)
		return
	}
	if err != nil {
		relay.Error(w, rq, http.StatusBadGateway, "the program failed to start", "program", id, "err", err)
		return
	}
	defer inst.Release()
	rq.Session = inst.Session
	relay.ServeAny(w, r, rq, route.Program.Interface)
}

// match finds the program a request addresses.
func (rt *Router) match(r *http.Request) (id, root, path, rawPath string, ok bool) {
	if rest, has := strings.CutPrefix(r.URL.Path, "/vm/"); has {
		id, path, _ = strings.Cut(rest, "/")
		path = "/" + path
		rawPath = "/"
		if rawRest, has := strings.CutPrefix(r.URL.EscapedPath(), "/vm/"+id); has && rawRest != "" {
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
			return label, "", r.URL.Path, r.URL.EscapedPath(), true
		}
	}
	return "", "", "", "", false
}
