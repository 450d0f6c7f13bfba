// Package persist runs this node's share of the cluster's persistent
// programs, so that each runs exactly once across the nodes: it renews the
// node's lease, starts the programs the lease gives it (with their fencing
// tokens), stops the ones it loses, stops them all the moment its lease
// runs out, and, on the leader, places the programs (cluster.Scheduler).
package persist

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
)

// Store is the cluster as the supervisor needs it (*cluster.Node).
type Store interface {
	Heartbeat(ctx context.Context) (cluster.Lease, error)
	IsLeader(ctx context.Context) bool
	Lease() time.Duration
}

// Placer watches the nodes and places the persistent programs on the
// leader (*cluster.Scheduler, from Node.NewScheduler).
type Placer interface {
	Step(ctx context.Context, wanted []cluster.Want) ([]cluster.Assignment, error)
	Observe(ctx context.Context) error
}

// Runner starts and stops this node's copies of persistent programs (the
// lifecycle manager).
type Runner interface {
	// Run keeps the program running with its fencing token until ctx
	// ends, restarting it when it stops, and stops it then: its VM must
	// be gone when Run returns.
	Run(ctx context.Context, programID string, token int64)
}

// Options configure a Supervisor.
type Options struct {
	Store  Store
	Placer Placer
	Runner Runner
	// Wanted lists the persistent programs the cluster should run, with
	// their resources (read at every step of the leader's scheduler).
	Wanted func() []cluster.Want
	Log    *slog.Logger
	// OnPlacement, if set, receives the leader's placement after each
	// step (for status and metrics).
	OnPlacement func([]cluster.Assignment)
}

// Supervisor is one node's share of the persistent programs.
type Supervisor struct {
	opt Options
	log *slog.Logger

	mu       sync.Mutex
	lease    cluster.Lease
	running  map[string]*copy         // program id -> this node's copy
	stopping map[string]chan struct{} // program id -> a stopped copy's end
}

// copy is a program this node runs.
type copy struct {
	token  int64
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a supervisor; Run starts it.
func New(opt Options) *Supervisor {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	return &Supervisor{opt: opt, log: opt.Log, running: map[string]*copy{}, stopping: map[string]chan struct{}{}}
}

// Run renews the lease every tenth of its period and acts on it until ctx
// ends; then it stops every copy. Placing (or, off the leader, watching
// the nodes) runs beside it, so that a slow placement never delays a
// renewal.
func (s *Supervisor) Run(ctx context.Context) {
	period := s.opt.Store.Lease() / 10
	placing := make(chan struct{})
	go func() {
		defer close(placing)
		s.place(ctx, period)
	}()
	defer func() { <-placing }()
	tick := time.NewTicker(period)
	defer tick.Stop()
	// The watchdog fires when the lease runs out without a renewal: at
	// that moment, not at the next tick, this node stops its copies.
	watchdog := time.NewTimer(time.Hour)
	watchdog.Stop()
	defer watchdog.Stop()
	defer s.stopAll("the agent is stopping")
	for {
		s.renew(ctx, watchdog)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-watchdog.C:
			s.expire()
		}
	}
}

// renew renews the lease (a renewal that takes a quarter of the lease is
// given up, to try again at the next tick) and reconciles the copies with
// it.
func (s *Supervisor) renew(ctx context.Context, watchdog *time.Timer) {
	hctx, cancel := context.WithTimeout(ctx, s.opt.Store.Lease()/4)
	lease, err := s.opt.Store.Heartbeat(hctx)
	cancel()
	if err != nil {
		if !s.Valid(time.Now()) {
			s.expire()
		}
		s.log.Debug("persist: lease not renewed", "err", err)
		return
	}
	s.mu.Lock()
	s.lease = lease
	s.mu.Unlock()
	watchdog.Reset(time.Until(lease.Until))
	s.reconcile(ctx, lease)
}

// place places the programs while this node leads, and watches the nodes
// otherwise, every period until ctx ends.
func (s *Supervisor) place(ctx context.Context, period time.Duration) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !s.opt.Store.IsLeader(ctx) {
			if err := s.opt.Placer.Observe(ctx); err != nil {
				s.log.Debug("persist: observing the nodes", "err", err)
			}
			continue
		}
		placed, err := s.opt.Placer.Step(ctx, s.opt.Wanted())
		if err != nil {
			s.log.Warn("persist: placing programs", "err", err)
			continue
		}
		for _, a := range placed {
			if a.Problem != "" {
				s.log.Debug("persist: program not placed", "program", a.Program, "problem", a.Problem)
			}
		}
		if s.opt.OnPlacement != nil {
			s.opt.OnPlacement(placed)
		}
	}
}

// reconcile starts what the lease gives this node and stops what it no
// longer does (or holds with another token).
func (s *Supervisor) reconcile(ctx context.Context, lease cluster.Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, c := range s.running {
		if token, ok := lease.Owned[id]; !ok || token != c.token {
			s.log.Info("persist: this node no longer runs the program", "program", id, "token", c.token)
			s.stopLocked(id)
		}
	}
	for id, token := range lease.Owned {
		if _, ok := s.running[id]; ok {
			continue
		}
		if done, ok := s.stopping[id]; ok {
			select {
			case <-done: // the old copy is gone: start the new one
				delete(s.stopping, id)
			default: // not yet: at a later step
				continue
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		c := &copy{token: token, cancel: cancel, done: make(chan struct{})}
		s.running[id] = c
		s.log.Info("persist: running the program here", "program", id, "token", token)
		go func() {
			defer close(c.done)
			s.opt.Runner.Run(cctx, id, token)
		}()
	}
}

// expire stops every copy: the lease ran out, another node may take the
// programs over.
func (s *Supervisor) expire() {
	s.mu.Lock()
	n := len(s.running)
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn("persist: the lease ran out without a renewal; stopping this node's persistent programs", "programs", n)
	}
	s.stopAll("lease expired")
}

// stopAll stops every copy and waits for them.
func (s *Supervisor) stopAll(why string) {
	s.mu.Lock()
	var waits []chan struct{}
	for id, c := range s.running {
		waits = append(waits, c.done)
		s.log.Debug("persist: stopping", "program", id, "why", why)
		s.stopLocked(id)
	}
	s.mu.Unlock()
	for _, w := range waits {
		<-w
	}
}

func (s *Supervisor) stopLocked(id string) {
	if c := s.running[id]; c != nil {
		c.cancel()
		delete(s.running, id)
		s.stopping[id] = c.done
	}
}

// Restart stops this node's copy of the program, if it runs one; the
// next renewal starts it again if the lease still gives it here, with
// the program as it is deployed then (its manifest changed, or it was
// deleted and the cluster no longer assigns it).
func (s *Supervisor) Restart(programID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.running[programID]; ok {
		s.log.Info("persist: restarting the program's copy here", "program", programID)
		s.stopLocked(programID)
	}
}

// Valid reports whether this node's lease holds at now: the request path
// serves a persistent program only while it does.
func (s *Supervisor) Valid(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease.Valid(now)
}

// Token returns the fencing token under which this node runs the program,
// and whether it runs it here under a valid lease.
func (s *Supervisor) Token(programID string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.running[programID]
	if !ok || !s.lease.Valid(time.Now()) {
		return 0, false
	}
	return c.token, true
}

// Running returns the ids of the programs this node runs, sorted.
func (s *Supervisor) Running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.running))
}
