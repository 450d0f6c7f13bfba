package persist

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
)

const testLease = 200 * time.Millisecond

// fakeStore hands out the leases the test sets, or fails.
type fakeStore struct {
	mu    sync.Mutex
	owned map[string]int64
	fail  bool
}

func (f *fakeStore) set(owned map[string]int64, fail bool) {
	f.mu.Lock()
	f.owned, f.fail = owned, fail
	f.mu.Unlock()
}

func (f *fakeStore) Heartbeat(context.Context) (cluster.Lease, error) {
	start := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return cluster.Lease{}, errors.New("no quorum")
	}
	owned := map[string]int64{}
	for k, v := range f.owned {
		owned[k] = v
	}
	return cluster.Lease{Owned: owned, Until: start.Add(testLease - testLease/5)}, nil
}
func (f *fakeStore) IsLeader(context.Context) bool { return false }
func (f *fakeStore) Lease() time.Duration          { return testLease }

type fakePlacer struct{}

func (fakePlacer) Step(context.Context, []cluster.Want) ([]cluster.Assignment, error) {
	return nil, nil
}
func (fakePlacer) Observe(context.Context) error { return nil }

// fakeRunner records which copies run, and when each stopped.
type fakeRunner struct {
	mu      sync.Mutex
	running map[string]int64
	stopped map[string]time.Time
}

func (r *fakeRunner) Run(ctx context.Context, id string, token int64) {
	r.mu.Lock()
	r.running[id] = token
	r.mu.Unlock()
	<-ctx.Done()
	r.mu.Lock()
	delete(r.running, id)
	r.stopped[id] = time.Now()
	r.mu.Unlock()
}

func (r *fakeRunner) tokenOf(id string) (int64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.running[id]
	return t, ok
}

func start(t *testing.T, store *fakeStore) (*Supervisor, *fakeRunner) {
	t.Helper()
	runner := &fakeRunner{running: map[string]int64{}, stopped: map[string]time.Time{}}
	s := New(Options{Store: store, Placer: fakePlacer{}, Runner: runner, Wanted: func() []cluster.Want { return nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, runner
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// What the lease gives is run with its token; what it takes away stops; a
// new token restarts the copy.
func TestCopiesFollowTheLease(t *testing.T) {
	store := &fakeStore{owned: map[string]int64{"a": 1, "b": 4}}
	s, runner := start(t, store)
	eventually(t, "a and b running", func() bool {
		ta, okA := runner.tokenOf("a")
		tb, okB := runner.tokenOf("b")
		return okA && okB && ta == 1 && tb == 4
	})
	if token, ok := s.Token("a"); !ok || token != 1 {
		t.Errorf("Token(a) = %d %v", token, ok)
	}
	store.set(map[string]int64{"a": 2}, false)
	eventually(t, "b stopped, a restarted with token 2", func() bool {
		ta, okA := runner.tokenOf("a")
		_, okB := runner.tokenOf("b")
		return okA && ta == 2 && !okB
	})
}

// A node that cannot renew its lease stops its copies when the lease runs
// out (not later), and serves them no more.
func TestCopiesStopWhenTheLeaseRunsOut(t *testing.T) {
	store := &fakeStore{owned: map[string]int64{"p": 7}}
	s, runner := start(t, store)
	eventually(t, "p running", func() bool { _, ok := runner.tokenOf("p"); return ok })
	lastRenewal := time.Now()
	store.set(nil, true)
	eventually(t, "p stopped", func() bool { _, ok := runner.tokenOf("p"); return !ok })
	runner.mu.Lock()
	stoppedAfter := runner.stopped["p"].Sub(lastRenewal)
	runner.mu.Unlock()
	// The last good lease ran until at most 4/5 of a lease after the last
	// renewal began; it stops then, well before a whole lease.
	if stoppedAfter > testLease {
		t.Errorf("stopped %s after the last renewal, later than the lease of %s", stoppedAfter, testLease)
	}
	if s.Valid(time.Now()) {
		t.Error("the lease still counts as valid")
	}
	if _, ok := s.Token("p"); ok {
		t.Error("Token says the program still runs here")
	}
	store.set(map[string]int64{"p": 7}, false)
	eventually(t, "p back once the lease is renewed", func() bool { _, ok := runner.tokenOf("p"); return ok })
}
