// Package admin is the host agent's management API and its client: list,
// inspect, deploy, stop, restart and delete programs, and read or follow
// their logs; the agent's metrics and its status page (GET /status) are
// served there too. It listens on a unix socket by default; on TCP it
// requires a bearer token (the status page also takes it as a Basic
// password, so that a browser can ask for it).
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/host/statuspage"
	"github.com/ferry-vm/ferry/host/trigger"
	"github.com/ferry-vm/ferry/protocol/message"
)

// DefaultSocket is where the admin API listens unless told otherwise.
const DefaultSocket = "/run/ferry/agent.sock"

// Status is one program as the API reports it.
type Status struct {
	ID         string `json:"id"`
	Interface  string `json:"interface"`
	Entrypoint string `json:"entrypoint"`
	HTTP       bool   `json:"http"`
	Persistent bool   `json:"persistent"`
	Running    bool   `json:"running"`
	VM         string `json:"vm,omitempty"`
	Started    string `json:"started,omitempty"`
	Timeline   string `json:"timeline,omitempty"`
	// ColdStartSeconds is how long the running VM took to boot, and
	// BootPhases the same boot phase by phase (init's timeline: each
	// phase's time since the one before; the first is since boot).
	ColdStartSeconds float64     `json:"cold_start_seconds,omitempty"`
	BootPhases       []BootPhase `json:"boot_phases,omitempty"`
	IPv4             string      `json:"ipv4,omitempty"` // the VM's addresses, when it has a network
	IPv6             string      `json:"ipv6,omitempty"`
	// Node is where a persistent program runs in the cluster, Token its
	// fencing token there.
	Node  string `json:"node,omitempty"`
	Token int64  `json:"token,omitempty"`
	// DataPlane says how the running VM's requests travel: the worker
	// sessions the agent holds and how many requests went to them
	// directly or through init.
	DataPlane *lifecycle.DataPlane `json:"data_plane,omitempty"`
	// Triggers are the program's schedule and subscriptions, with its
	// last deliveries of events (when it has any).
	Triggers *trigger.Record `json:"triggers,omitempty"`
	// LastBootError is why the program's last boot failed, and
	// LastBootErrorAt when, until a boot succeeds.
	LastBootError   string `json:"last_boot_error,omitempty"`
	LastBootErrorAt string `json:"last_boot_error_at,omitempty"`
}

// BootPhase is one phase of a VM's boot timeline.
type BootPhase struct {
	Phase   string  `json:"phase"`
	Seconds float64 `json:"seconds"`
}

// Server serves the API.
type Server struct {
	Programs *front.Programs
	Manager  *lifecycle.Manager
	Token    string // required as "Authorization: Bearer TOKEN" when set
	Log      *slog.Logger
	// Metrics, when set, serves GET /metrics and /healthz (behind the
	// token like the rest).
	Metrics http.Handler
	// Deployer, when set, deploys and deletes (the cluster's catalog);
	// otherwise Programs does.
	Deployer Deployer
	// Cluster, when set, serves the cluster's status, its key-value
	// store and node removal.
	Cluster ClusterView
	// Observed, when set, gives the status page what the agent observed:
	// its backend, recent requests, log warnings and errors, cold-start
	// histograms (the rest of the View is the API's own).
	Observed func() statuspage.View
	// Events, when set, takes posted events (POST /v1/events) and shows
	// each program's deliveries in its status.
	Events Events
}

// IsUnix reports whether addr names a unix socket (a path) rather than
// host:port.
func IsUnix(addr string) bool { return strings.Contains(addr, "/") }

// Listen opens the API's listener: a unix socket (owner-only) or TCP, which
// needs a token.
func Listen(addr, token string) (net.Listener, error) {
	if !IsUnix(addr) {
		if token == "" {
			return nil, errors.New("the admin API on TCP needs a token (--admin-token or FERRY_ADMIN_TOKEN)")
		}
		return net.Listen("tcp", addr)
	}
	if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.Dial("unix", addr); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is serving %s", addr)
	}
	os.Remove(addr) // stale socket of an agent that is gone
	l, err := net.Listen("unix", addr)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(addr, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Handler returns the API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/programs", s.list)
	mux.HandleFunc("GET /v1/programs/{id}", s.status)
	mux.HandleFunc("PUT /v1/programs/{id}", s.deploy)
	mux.HandleFunc("DELETE /v1/programs/{id}", s.delete)
	mux.HandleFunc("POST /v1/programs/{id}/stop", s.stop)
	mux.HandleFunc("POST /v1/programs/{id}/restart", s.restart)
	mux.HandleFunc("GET /v1/programs/{id}/logs", s.logs)
	mux.HandleFunc("GET /status", s.statusPage)
	s.clusterRoutes(mux)
	s.eventRoutes(mux)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics)
		mux.Handle("GET /healthz", s.Metrics)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Token != "" && !authorized(r, s.Token, r.URL.Path == "/status") {
			w.Header().Set("WWW-Authenticate", "Bearer")
			if r.URL.Path == "/status" {
				w.Header().Add("WWW-Authenticate", `Basic realm="ferry admin token", charset="UTF-8"`)
			}
			writeError(w, http.StatusUnauthorized, "missing or wrong admin token")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// authorized reports whether r carries exactly "Authorization: Bearer
// TOKEN" (one such header; the token compared in constant time), or,
// where basic is allowed (the status page, for browsers), HTTP Basic
// credentials whose password is the token (any user name).
func authorized(r *http.Request, token string, basic bool) bool {
	values := r.Header.Values("Authorization")
	if len(values) != 1 {
		return false
	}
	got, ok := strings.CutPrefix(values[0], "Bearer ")
	if !ok && basic {
		_, got, ok = r.BasicAuth()
	}
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (s *Server) describe(id string) (Status, bool) {
	route := s.Programs.Route(id)
	if route == nil {
		return Status{}, false
	}
	p := route.Program
	st := Status{ID: id, Interface: p.Interface, Entrypoint: p.Entrypoint, HTTP: route.HTTP, Persistent: p.Persistent}
	if inst := s.Manager.Instance(id); inst != nil {
		st.Running, st.VM = true, inst.VM.Describe()
		st.Started = inst.Started.UTC().Format(time.RFC3339)
		st.Timeline = message.FormatTimeline(inst.Timeline)
		st.ColdStartSeconds = inst.ColdStart.Seconds()
		var prev uint64
		for _, e := range inst.Timeline {
			st.BootPhases = append(st.BootPhases, BootPhase{Phase: string(e.Phase), Seconds: float64(e.BootNano-prev) / 1e9})
			prev = e.BootNano
		}
		if nw := inst.VM.Network(); nw != nil {
			st.IPv4, st.IPv6 = nw.GuestIPv4, nw.GuestIPv6
		}
		dp := inst.DataPlane()
		st.DataPlane = &dp
	}
	if s.Cluster != nil && p.Persistent {
		st.Node, st.Token = s.Cluster.Placement(id)
	}
	st.Triggers = s.triggers(id)
	if f, failed := s.Manager.LastBootFailure(id); failed {
		st.LastBootError, st.LastBootErrorAt = f.Err, f.At.UTC().Format(time.RFC3339)
	}
	return st, true
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	out := []Status{}
	for _, id := range s.Programs.IDs() {
		if st, ok := s.describe(id); ok {
			out = append(out, st)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, ok := s.describe(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "no such program")
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) deploy(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	var m manifest.Program
	if err := dec.Decode(&m); err != nil {
		writeError(w, http.StatusBadRequest, "manifest: "+err.Error())
		return
	}
	if field := m.RelativePath(); field != "" {
		writeError(w, http.StatusBadRequest, "programs."+id+"."+field+": must be absolute when deploying over the API")
		return
	}
	// Volumes this node's disk cannot hold are refused now rather than
	// at the first boot (which checks again).
	err := s.Programs.CheckSpace(id, &m)
	switch {
	case err != nil:
	case s.Deployer != nil:
		err = s.Deployer.Deploy(r.Context(), id, &m)
	default:
		err = s.Programs.Deploy(id, &m)
	}
	var ferr *manifest.FieldError
	var serr *backend.SpaceError
	switch {
	case errors.As(err, &ferr):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.As(err, &serr):
		writeError(w, http.StatusInsufficientStorage, err.Error())
	case errors.Is(err, front.ErrExists):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, cluster.ErrNoQuorum):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		s.Log.Info("program deployed", "program", id)
		st, _ := s.describe(id)
		writeJSON(w, http.StatusCreated, st)
	}
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	del := s.Programs.Delete
	if s.Deployer != nil {
		del = s.Deployer.Delete
	}
	if err := del(ctx, r.PathValue("id")); err != nil {
		if errors.Is(err, front.ErrNotFound) {
			writeError(w, http.StatusNotFound, "no such program")
			return
		}
		clusterError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"deleted": r.PathValue("id")})
}

func (s *Server) stop(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if s.Programs.Route(id) == nil {
		writeError(w, http.StatusNotFound, "no such program")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := s.Manager.Stop(ctx, id); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	st, _ := s.describe(id)
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	route := s.Programs.Route(id)
	if route == nil {
		writeError(w, http.StatusNotFound, "no such program")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	if s.Cluster != nil && route.Program.Persistent {
		// Only where it runs, and by its supervisor: a copy started here
		// by the API would be a second one.
		here, node := s.Cluster.Owner(id)
		if !here {
			writeError(w, http.StatusConflict, fmt.Sprintf("this persistent program runs on node %q: restart it there", node))
			return
		}
		if err := s.Manager.Stop(ctx, id); err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		st, _ := s.describe(id)
		writeJSON(w, http.StatusOK, st)
		return
	}
	if err := s.Manager.Stop(ctx, id); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	inst, err := s.Manager.Acquire(ctx, route.Program)
	if err != nil {
		writeError(w, http.StatusBadGateway, "the program failed to start: "+err.Error())
		return
	}
	inst.Release()
	st, _ := s.describe(id)
	writeJSON(w, http.StatusOK, st)
}
