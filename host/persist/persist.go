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
	unplaced map[string]string        // program id -> why the leader could not place it
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
	// The watchdog stops this node's copies a tenth of the lease before
	// the lease runs out (the time their VMs take to stop), whatever the
	// renewal loop is doing then.
	watchdog := time.AfterFunc(time.Hour, s.expire)
	watchdog.Stop()
	defer watchdog.Stop()
	defer s.stopAll("the agent is stopping")
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		s.renew(ctx, watchdog)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// renew renews the lease and reconciles the copies with it. A renewal is
// given up after a quarter of the lease, or sooner when the current lease
// would have to be given up before it could end.
func (s *Supervisor) renew(ctx context.Context, watchdog *time.Timer) {
	lease := s.opt.Store.Lease()
	limit := lease / 4
	s.mu.Lock()
	if left := time.Until(s.stopAt(s.lease)); s.lease.Valid(time.Now()) && left < limit {
		limit = max(left, lease/20)
	}
	s.mu.Unlock()
	hctx, cancel := context.WithTimeout(ctx, limit)
	renewed, err := s.opt.Store.Heartbeat(hctx)
	cancel()
	if err != nil {
		s.log.Debug("persist: lease not renewed", "err", err)
		return
	}
	s.mu.Lock()
	s.lease = renewed
	s.mu.Unlock()
	watchdog.Reset(time.Until(s.stopAt(renewed)))
	s.reconcile(ctx, renewed)
}

// stopAt is when the copies held under l must start stopping: a tenth of
// the lease before it runs out.
func (s *Supervisor) stopAt(l cluster.Lease) time.Time {
	return l.Until.Add(-s.opt.Store.Lease() / 10)
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
		s.reportUnplaced(placed)
		if s.opt.OnPlacement != nil {
			s.opt.OnPlacement(placed)
		}
	}
}

// reportUnplaced warns, once per program and reason, of the programs the
// leader could not place.
func (s *Supervisor) reportUnplaced(placed []cluster.Assignment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unplaced == nil {
		s.unplaced = map[string]string{}
	}
	now := map[string]string{}
	for _, a := range placed {
		if a.Problem == "" {
			continue
		}
		now[a.Program] = a.Problem
		if s.unplaced[a.Program] != a.Problem {
			s.log.Warn("persist: a persistent program cannot be placed", "program", a.Program, "problem", a.Problem)
		}
	}
	s.unplaced = now
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

// Valid reports whether this node's lease holds at now (until its
// copies must start stopping): the request path serves a persistent
// program only while it does.
func (s *Supervisor) Valid(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease.Valid(now) && now.Before(s.stopAt(s.lease))
}

// Token returns the fencing token under which this node runs the program,
// and whether it runs it here under a valid lease.
func (s *Supervisor) Token(programID string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.running[programID]
	if now := time.Now(); !ok || !s.lease.Valid(now) || !now.Before(s.stopAt(s.lease)) {
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
