// Package guestapi is the host's side of the guest API: the HTTP API a
// program calls from inside its VM (init relays each call to the host
// agent over the VM's session). A Service holds what the programs share
// (the store, the limits, a rate limiter per program); its Handler for a
// Caller serves that one program, whose identity comes from the VM the
// call arrived from: a call can never name another program.
//
// Endpoints (README "Guest API" documents them for programs):
//
//	GET    /v1/properties       the program, node, addresses, resources
//	GET    /v1/kv/{key}         a value, as the bytes stored
//	PUT    /v1/kv/{key}?ttl=S   store the request body (expiring after S seconds)
//	DELETE /v1/kv/{key}         remove a key
//	GET    /v1/kv?prefix=P      list keys (after=K, limit=N to page)
//
// Errors are JSON objects {"error": {"code": code, "message": message}}
// (httpstream.JSONError, as init's own), with a status and a code that
// stays the same (errors.go).
package guestapi

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
	"golang.org/x/time/rate"
)

// Defaults of Limits.
const (
	// DefaultRate is the calls a program makes per second, sustained:
	// enough for an app that reads and writes a key or two per request,
	// few enough that a program calling in a loop costs the store little.
	DefaultRate = 100
	// DefaultBurst is the calls a program makes at once above the rate.
	DefaultBurst = 200
	// DefaultWriteRate is the bytes (keys and values) a program writes
	// per second, sustained, after a burst of its MaxBytes: the quota
	// bounds what a program holds, this what its rewrites cost, since
	// every write is a Raft entry that every node stores.
	DefaultWriteRate = 1 << 20
	// DefaultMaxKeys is the most keys one program holds.
	DefaultMaxKeys = 1000
	// DefaultMaxValue is the largest value (the store's own bound).
	DefaultMaxValue = cluster.MaxValue
	// DefaultMaxBytes is the most bytes (keys and values) one program
	// holds: every node keeps a copy of every program's store.
	DefaultMaxBytes = 16 << 20
	// MaxKey is the longest key, in bytes.
	MaxKey = 256
	// MaxTTL is the longest TTL, in seconds (a year).
	MaxTTL = 365 * 24 * 3600
	// DefaultListLimit and MaxListLimit are the keys one listing returns
	// without limit=, and at most.
	DefaultListLimit = 100
	MaxListLimit     = 1000
	// callTimeout bounds one call's work in the store.
	callTimeout = 10 * time.Second
	// limiterIdle is how long a program's rate limiter is kept unused.
	limiterIdle = 10 * time.Minute
)

// Limits bound what each program does with the API; a zero field takes
// its default.
type Limits struct {
	// Rate is the calls per second a program makes, sustained, and Burst
	// how many it makes at once; past them, calls are answered 429.
	Rate  float64
	Burst int
	// WriteRate is the bytes of keys and values a program writes per
	// second, sustained, after a burst of MaxBytes; past it, writes are
	// answered 429.
	WriteRate float64
	// MaxKeys, MaxValue and MaxBytes are the program's quota: keys held,
	// bytes in one value, bytes of keys and values in all.
	MaxKeys  int
	MaxValue int
	MaxBytes int64
}

// withDefaults fills the zero fields.
func (l Limits) withDefaults() Limits {
	if l.Rate <= 0 {
		l.Rate = DefaultRate
	}
	if l.Burst <= 0 {
		l.Burst = DefaultBurst
	}
	if l.WriteRate <= 0 {
		l.WriteRate = DefaultWriteRate
	}
	if l.MaxKeys <= 0 {
		l.MaxKeys = DefaultMaxKeys
	}
	if l.MaxValue <= 0 || l.MaxValue > cluster.MaxValue {
		l.MaxValue = DefaultMaxValue
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	return l
}

// Store keeps the programs' keys (a *cluster.Node).
type Store interface {
	KVGet(ctx context.Context, program, key string) ([]byte, error)
	KVSet(ctx context.Context, program, key string, value []byte, w cluster.KVWrite) error
	KVDelete(ctx context.Context, program, key string, token int64) error
	KVList(ctx context.Context, program, prefix, after string, limit int) ([]cluster.KVEntry, bool, error)
}

// Options configure a Service.
type Options struct {
	// Store keeps the keys; nil: the agent has none (host-agent run),
	// and the kv endpoints answer 503.
	Store Store
	// Limits bound each program.
	Limits Limits
	// Log receives the calls refused for a fault of the host.
	Log *slog.Logger
}

// Service serves the guest API of every program of an agent.
type Service struct {
	store  Store
	limits Limits
	log    *slog.Logger

	mu       sync.Mutex
	limiters map[string]*limiter
	swept    time.Time
}

// limiter is a program's rate limiters, shared by its VMs on this node:
// of its calls, and of the bytes it writes.
type limiter struct {
	calls, bytes *rate.Limiter
	used         time.Time
}

// New makes a Service.
func New(opt Options) *Service {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{store: opt.Store, limits: opt.Limits.withDefaults(), log: opt.Log,
		limiters: map[string]*limiter{}, swept: time.Now()}
}

// Limits returns the limits in force (defaults filled in).
func (s *Service) Limits() Limits { return s.limits }

// Caller is the program a Handler serves, as its VM says: nothing in a
// call changes it.
type Caller struct {
	// Program is the program's id: its namespace in the store.
	Program string
	// Node is the name of the node the VM runs on.
	Node string
	// IPv4 and IPv6 are the VM's addresses (empty without a network).
	IPv4, IPv6 string
	// VCPUs and MemoryMiB are its resources (0: the backend's default).
	VCPUs, MemoryMiB int
	// Persistent programs write with FencingToken, their token of this
	// boot: once another node took the program over, writes get 409.
	Persistent   bool
	FencingToken int64
}

// limiter returns the program's rate limiters, and forgets those unused
// for long (they are full again by then).
func (s *Service) limiter(program string, now time.Time) *limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.swept) > time.Minute {
		for id, l := range s.limiters {
			if now.Sub(l.used) > limiterIdle {
				delete(s.limiters, id)
			}
		}
		s.swept = now
	}
	l := s.limiters[program]
	if l == nil {
		// A write is at most a key and a value: the burst always admits one.
		burst := max(s.limits.MaxBytes, int64(MaxKey+s.limits.MaxValue))
		l = &limiter{calls: rate.NewLimiter(rate.Limit(s.limits.Rate), s.limits.Burst),
			bytes: rate.NewLimiter(rate.Limit(s.limits.WriteRate), int(min(burst, math.MaxInt32)))}
		s.limiters[program] = l
	}
	l.used = now
	return l
}

// admit takes n tokens from l now, or answers e (a 429) with the wait in
// Retry-After and takes none.
func admit(w http.ResponseWriter, l *rate.Limiter, n int, e apiError) bool {
	now := time.Now()
	res := l.ReserveN(now, n)
	wait := res.DelayFrom(now)
	if res.OK() && wait == 0 {
		return true
	}
	res.CancelAt(now)
	if !res.OK() {
		wait = time.Second
	}
	w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	writeError(w, e)
	return false
}

// Handler serves the calls of one program.
func (s *Service) Handler(c Caller) http.Handler {
	return &handler{s: s, c: c}
}

// handler is a Service's handler for one Caller.
type handler struct {
	s *Service
	c Caller
}

// ServeHTTP routes a call (by hand, so that every answer, 404 and 405
// included, is the API's JSON).
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !admit(w, h.s.limiter(h.c.Program, time.Now()).calls, 1, errRate) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	r = r.WithContext(ctx)
	path := r.URL.Path
	switch {
	case path == "/v1/properties":
		if allow(w, r, http.MethodGet) {
			h.properties(w, r)
		}
	case path == "/v1/kv" || path == "/v1/kv/":
		if allow(w, r, http.MethodGet) {
			h.list(w, r)
		}
	case len(path) > len("/v1/kv/") && path[:len("/v1/kv/")] == "/v1/kv/":
		key := path[len("/v1/kv/"):]
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.get(w, r, key)
		case http.MethodPut:
			h.put(w, r, key)
		case http.MethodDelete:
			h.delete(w, r, key)
		default:
			methodNotAllowed(w, r, "GET, HEAD, PUT, DELETE")
		}
	default:
		writeError(w, apiError{http.StatusNotFound, "unknown_endpoint", "no endpoint " + path + " (see /v1/properties and /v1/kv)"})
	}
}

// allow answers 405 unless the call's method is method (or HEAD for GET).
func allow(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	methodNotAllowed(w, r, method)
	return false
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allowed string) {
	w.Header().Set("Allow", allowed)
	writeError(w, apiError{http.StatusMethodNotAllowed, "method_not_allowed", r.Method + " " + r.URL.Path + ": allowed " + allowed})
}
