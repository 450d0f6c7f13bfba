package lifecycle

import (
	"context"
	"errors"
	"github.com/ferry-vm/ferry/protocol/contract"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/protocol/message"
)

// newFakeBackend is a backend whose boots wait for the test to close its
// Gate.
func newFakeBackend() *backendtest.Backend {
	return &backendtest.Backend{Gate: make(chan struct{})}
}

func newTestManager(t *testing.T, be backend.Backend, opt Options) *Manager {
	opt.Backend, opt.InitPath = be, "/nonexistent/init"
	if opt.RestartBackoff == 0 {
		opt.RestartBackoff = 10 * time.Millisecond
	}
	m := New(opt)
	t.Cleanup(func() {
		m.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.StopAll(ctx)
	})
	return m
}

// acquiring calls Acquire in the background and delivers its error (the
// instance, if any, is released).
func acquiring(m *Manager, p *Program) <-chan error {
	got := make(chan error, 1)
	go func() {
		inst, err := m.Acquire(context.Background(), p)
		if err == nil {
			inst.Release()
		}
		got <- err
	}()
	return got
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Removing a persistent program while it boots ends that boot's VM; the
// boot finishing later brings nothing back, and the supervisor stops.
func TestRemoveDuringBootEndsTheVM(t *testing.T) {
	t.Parallel()
	be := newFakeBackend()
	m := newTestManager(t, be, Options{})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "slow", Persistent: true}
	ctx, cancel := context.WithCancel(context.Background())
	supervised := make(chan struct{})
	go func() { defer close(supervised); m.Persist(ctx, p) }()
	vm := <-be.Started()

	cancel() // what front.Programs.Delete does, then Remove
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopCancel()
	if err := m.Remove(stopCtx, p); err != nil {
		t.Fatal(err)
	}
	if !vm.Ended() {
		t.Fatal("the booting VM still runs after Remove returned")
	}
	close(be.Gate) // the boot would have finished now
	select {
	case <-supervised:
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor did not stop")
	}
	time.Sleep(50 * time.Millisecond)
	if r := m.Running(); len(r) != 0 {
		t.Fatalf("running after Remove: %v", r)
	}
	if n := be.Boots(); n != 1 {
		t.Fatalf("%d VMs started, want 1", n)
	}
	if _, err := m.Acquire(context.Background(), p); !errors.Is(err, ErrRemoved) {
		t.Fatalf("Acquire after Remove: %v", err)
	}
}

// Stop during an on-demand boot ends the VM, and the requests waiting on
// that boot get ErrStopped instead of an instance nobody tracks.
func TestStopDuringBootEndsTheVMAndItsWaiters(t *testing.T) {
	t.Parallel()
	be := newFakeBackend()
	m := newTestManager(t, be, Options{})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "od"}
	got := acquiring(m, p)
	vm := <-be.Started()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Stop(ctx, "od"); err != nil {
		t.Fatal(err)
	}
	if !vm.Ended() {
		t.Fatal("the booting VM still runs after Stop returned")
	}
	select {
	case err := <-got:
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("the waiting request got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting request was not answered")
	}
	if r := m.Running(); len(r) != 0 {
		t.Fatalf("running after Stop: %v", r)
	}
	// The next request boots again.
	close(be.Gate)
	inst, err := m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
}

// OnOutput never runs on the session's read loop: with OnOutput stuck,
// the boot still completes, and the lines over the rate are counted and
// reported as dropped once OnOutput moves again.
func TestOutputNeverBlocksTheSessionAndIsRateLimited(t *testing.T) {
	t.Parallel()
	be := newFakeBackend()
	be.Logs = 5000
	close(be.Gate)
	unblock := make(chan struct{})
	var delivered, reported atomic.Int64
	var notice atomic.Value
	m := newTestManager(t, be, Options{
		OutputRate: 10, // a burst of 101 lines, then 10 a second
		OnOutput: func(id string, l message.Log) {
			<-unblock
			if string(l.Source) == "ferry" {
				notice.Store(string(l.Line))
				return
			}
			delivered.Add(1)
		},
		OnOutputDropped: func(id string, n int) { reported.Add(int64(n)) },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst, err := m.Acquire(ctx, &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "loud"})
	if err != nil {
		t.Fatalf("the boot did not complete while OnOutput was stuck: %v", err)
	}
	inst.Release()
	close(unblock)
	waitUntil(t, "no report of the dropped lines", func() bool { return reported.Load() > 0 && notice.Load() != nil })
	d, r := delivered.Load(), reported.Load()
	if d > 200 || d+r > 5000 || r < 4000 {
		t.Fatalf("%d lines delivered, %d reported dropped of 5000", d, r)
	}
	if s := notice.Load().(string); !strings.Contains(s, "lines of output dropped") {
		t.Fatalf("notice: %q", s)
	}
}

// When Stop returns, the program is no longer running: its VM has ended
// and the manager says so at once (the admin API reports from it).
func TestStopReturnsWhenTheProgramIsNoLongerRunning(t *testing.T) {
	t.Parallel()
	be := newFakeBackend()
	close(be.Gate)
	m := newTestManager(t, be, Options{IdleTimeout: -1})
	p := &Program{ID: "stopped", Interface: "asgi", Entrypoint: "main:app"}
	for round := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		inst, err := m.Acquire(ctx, p)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		inst.Release()
		if err := m.Stop(ctx, p.ID); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
		if m.Instance(p.ID) != nil {
			t.Fatalf("round %d: the program still counts as running after Stop returned", round)
		}
	}
}
