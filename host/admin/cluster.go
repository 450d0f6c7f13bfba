package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/manifest"
)

// Deployer changes the set of deployed programs (serve: the cluster's
// catalog, so that every node serves what is deployed on any). When a
// Server has none, it deploys to its Programs alone.
type Deployer interface {
	Deploy(ctx context.Context, id string, m *manifest.Program) error
	Delete(ctx context.Context, id string) error
}

// ClusterView is the cluster as the admin API shows and changes it.
type ClusterView interface {
	// Status is the cluster's nodes and where persistent programs run.
	Status(ctx context.Context) (*ClusterStatus, error)
	// Placement is a persistent program's node and fencing token (empty
	// when it is not placed, or not persistent).
	Placement(id string) (node string, token int64)
	// Owner says whether this node runs the persistent program (under a
	// valid lease), or which node does.
	Owner(id string) (here bool, node string)
	// RemoveNode takes a node out of the cluster.
	RemoveNode(ctx context.Context, name string) error
	// KVGet, KVPut and KVDelete reach a program's key-value store; a
	// non-zero token fences the write (cluster.ErrStaleToken when it is
	// not the program's current one).
	KVGet(ctx context.Context, program, key string) ([]byte, error)
	KVPut(ctx context.Context, program, key string, value []byte, token int64) error
	KVDelete(ctx context.Context, program, key string, token int64) error
}

// ClusterStatus is GET /v1/cluster.
type ClusterStatus struct {
	Node     string               `json:"node"`   // the node that answers
	Leader   string               `json:"leader"` // the Raft leader, which places persistent programs
	Lease    string               `json:"lease"`
	Nodes    []ClusterNode        `json:"nodes"`
	Programs []cluster.Assignment `json:"programs"` // where each persistent program runs, with its token
}

// ClusterNode is one node in ClusterStatus.
type ClusterNode struct {
	cluster.NodeInfo
	// LastHeartbeat is how many seconds ago the answering node last saw
	// this node's heartbeat counter move (-1: not yet observed).
	LastHeartbeat float64 `json:"last_heartbeat_seconds"`
}

// clusterRoutes adds the cluster's endpoints.
func (s *Server) clusterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/cluster", s.clusterStatus)
	mux.HandleFunc("DELETE /v1/cluster/nodes/{name}", s.removeNode)
	mux.HandleFunc("GET /v1/programs/{id}/kv/{key}", s.kvGet)
	mux.HandleFunc("PUT /v1/programs/{id}/kv/{key}", s.kvPut)
	mux.HandleFunc("DELETE /v1/programs/{id}/kv/{key}", s.kvDelete)
}

// clusterError answers an error of the cluster: 503 without a quorum, 409
// for a stale fencing token, 404 for what does not exist.
func clusterError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, cluster.ErrNoQuorum):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, cluster.ErrStaleToken):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, cluster.ErrNoKey), errors.Is(err, front.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (s *Server) needCluster(w http.ResponseWriter) bool {
	if s.Cluster == nil {
		writeError(w, http.StatusNotFound, "this agent is not part of a cluster")
		return false
	}
	return true
}

func (s *Server) clusterStatus(w http.ResponseWriter, r *http.Request) {
	if !s.needCluster(w) {
		return
	}
	st, err := s.Cluster.Status(r.Context())
	if err != nil {
		clusterError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) removeNode(w http.ResponseWriter, r *http.Request) {
	if !s.needCluster(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	if err := s.Cluster.RemoveNode(ctx, r.PathValue("name")); err != nil {
		clusterError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": r.PathValue("name")})
}

// kvProgram checks the program exists and returns its id.
func (s *Server) kvProgram(w http.ResponseWriter, r *http.Request) (string, bool) {
	if !s.needCluster(w) {
		return "", false
	}
	id := r.PathValue("id")
	if s.Programs.Route(id) == nil {
		writeError(w, http.StatusNotFound, "no such program")
		return "", false
	}
	return id, true
}

// fencingToken reads ?token=N (0 when absent).
func fencingToken(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("token")
	if v == "" {
		return 0, nil
	}
	t, err := strconv.ParseInt(v, 10, 64)
	if err != nil || t < 0 {
		return 0, fmt.Errorf("token %q: want a fencing token (a positive number)", v)
	}
	return t, nil
}

func (s *Server) kvGet(w http.ResponseWriter, r *http.Request) {
	id, ok := s.kvProgram(w, r)
	if !ok {
		return
	}
	v, err := s.Cluster.KVGet(r.Context(), id, r.PathValue("key"))
	if err != nil {
		clusterError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(v)
}

// kvWrite checks a write's program and reads its fencing token.
func (s *Server) kvWrite(w http.ResponseWriter, r *http.Request) (string, int64, bool) {
	id, ok := s.kvProgram(w, r)
	if !ok {
		return "", 0, false
	}
	token, err := fencingToken(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", 0, false
	}
	return id, token, true
}

func (s *Server) kvPut(w http.ResponseWriter, r *http.Request) {
	id, token, ok := s.kvWrite(w, r)
	if !ok {
		return
	}
	value, err := io.ReadAll(io.LimitReader(r.Body, cluster.MaxValue+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(value) > cluster.MaxValue {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("a value is at most %d bytes", cluster.MaxValue))
		return
	}
	if err := s.Cluster.KVPut(r.Context(), id, r.PathValue("key"), value, token); err != nil {
		clusterError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"program": id, "key": r.PathValue("key"), "bytes": len(value)})
}

func (s *Server) kvDelete(w http.ResponseWriter, r *http.Request) {
	id, token, ok := s.kvWrite(w, r)
	if !ok {
		return
	}
	if err := s.Cluster.KVDelete(r.Context(), id, r.PathValue("key"), token); err != nil {
		clusterError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"program": id, "deleted": r.PathValue("key")})
}
