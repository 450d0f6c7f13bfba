package front

import (
	"net/http"
	"path"
	"strings"

	"github.com/ferry-vm/ferry/host/relay"
)

// ReservedPrefix starts the paths where programs receive what the agent
// itself sends them (host/trigger's events): requests from outside to a
// path under it are refused (404) before they reach a program, so that a
// program can trust what arrives there.
const ReservedPrefix = "/_ferry/"

// reserved reports whether a program's path is under ReservedPrefix, or
// would be once its empty and dot segments are resolved or its case
// ignored: a program's own server may do that (nginx merges slashes and
// resolves dot segments, some frameworks route without case), so
// //_ferry/event, /x/../_ferry/event or /_FERRY/event would reach its
// event handler.
func reserved(p string) bool {
	if hasPrefixFold(p, ReservedPrefix) {
		return true
	}
	c := path.Clean(p)
	return strings.EqualFold(c, strings.TrimSuffix(ReservedPrefix, "/")) || hasPrefixFold(c, ReservedPrefix)
}

// hasPrefixFold is strings.HasPrefix ignoring ASCII case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// ServeProgram serves a request the agent makes itself (the events of
// host/trigger) to program id exactly as a routed request is served: under
// the program's limit of requests in flight and its time limit, its VM
// booted on demand, a persistent program of a cluster only where it runs
// (forwarded there with the cluster's key, Forwarder.serveAgent). Unlike ServeHTTP it does not look at on.http (a program
// reached only by its triggers gets them) and records no HTTP metrics.
// The program sees r's URL path with an empty root_path; the answer, or
// the agent's JSON error (404 for an unknown program), goes to w.
func (rt *Router) ServeProgram(w http.ResponseWriter, r *http.Request, id string) {
	// A new id, or the forwarding node's (the same in both nodes' logs).
	ex := &relay.Exchange{ID: relay.RequestID(r), MaxBody: rt.MaxBody, Log: rt.Log}
	route := rt.Programs.Route(id)
	if route == nil {
		reject(w, r, ex, http.StatusNotFound, "no such program", "program", id)
		return
	}
	ex.Path, ex.RawPath, ex.Timeout = r.URL.Path, r.URL.EscapedPath(), route.Timeout
	if route.Program.Persistent && rt.Owner != nil {
		rt.servePersistent(w, r, ex, route, func(node string) bool {
			return rt.Forward != nil && rt.Forward.serveAgent(w, r, ex, node, id)
		})
		return
	}
	serveProgram(w, r, ex, rt.Manager, route.Program, route.Limiter)
}

// serveFromNode serves a request another node's agent made to a
// persistent program that runs here (Forwarder.serveAgent): with the
// cluster's key (removed), the rest of the path goes to the program as
// ServeProgram serves it (never forwarded again); without, it is the 404
// of any unknown path. Until this node knows the key, or the program,
// the answer is a 503 (the sender retries an event after it).
func (rt *Router) serveFromNode(w http.ResponseWriter, r *http.Request, ex *relay.Exchange) {
	if len(rt.Forward.key()) == 0 {
		reject(w, r, ex, http.StatusServiceUnavailable, "this node does not know the cluster's forwarding key yet; try again later")
		return
	}
	if !rt.Forward.fromNode(r) {
		reject(w, r, ex, http.StatusNotFound, "no such program", "path", r.URL.Path, "host", r.Host)
		return
	}
	id, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, AgentPrefix), "/")
	if rt.Programs.Route(id) == nil {
		// Another node knows it: this one will once the cluster's
		// programs reach it.
		reject(w, r, ex, http.StatusServiceUnavailable, "this node does not know the program yet; try again later", "program", id)
		return
	}
	r.URL.Path, r.URL.RawPath = "/"+rest, ""
	rt.ServeProgram(w, r, id)
}
