// Package front is the host agent's HTTP front: it routes requests to
// programs, starts their VMs through the lifecycle manager and relays
// requests with the relay package.
package front

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/host/relay"
)

// Single serves one program at the root of the listener, as
// `host-agent run` does.
type Single struct {
	Manager *lifecycle.Manager
	Program *lifecycle.Program
	MaxBody int64
	Timeout time.Duration
	Log     *slog.Logger
	Metrics *metrics.Metrics // optional
	// Limiter bounds the requests in flight; nil: no bound.
	Limiter *Limiter
}

// ServeHTTP implements http.Handler.
func (s *Single) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.Metrics != nil {
		rec := &metrics.StatusRecorder{ResponseWriter: w}
		start := time.Now()
		defer func() { s.Metrics.Request(s.Program.ID, rec.Status, time.Since(start)) }()
		w = rec
	}
	rq := &relay.Request{ID: relay.NewRequestID(), Path: r.URL.Path, RawPath: r.URL.EscapedPath(), MaxBody: s.MaxBody, Timeout: s.Timeout, Log: s.Log}
	serveProgram(w, r, rq, s.Manager, s.Program, s.Limiter)
}
