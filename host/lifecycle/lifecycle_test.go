package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// fakeBackend starts fake VMs: a mux server on the other end of a pipe
// that greets, takes the configuration, and answers it only once the
// test releases the boot. Before that it may send LOG frames.
type fakeBackend struct {
	release chan struct{} // closed: configurations are answered
	logs    int           // LOG frames each VM sends after the configuration
	mu      sync.Mutex
	vms     []*fakeVM
	started chan *fakeVM
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{release: make(chan struct{}), started: make(chan *fakeVM, 16)}
}

func (b *fakeBackend) Name() string { return "fake" }

func (b *fakeBackend) Start(ctx context.Context, spec backend.Spec) (backend.VM, error) {
	host, guest := net.Pipe()
	v := &fakeVM{conn: host, done: make(chan struct{})}
	configured := make(chan struct{}, 1)
	sess := mux.Server(guest, mux.Config{OnControl: func(t frame.Type, _ []byte) {
		if t == frame.TypeConfig {
			configured <- struct{}{}
		}
	}})
	go func() {
		defer v.Kill()
		select {
		case <-configured:
		case <-v.done:
			return
		}
		for i := range b.logs {
			sess.SendControlMessage(frame.TypeLog, &message.Log{Source: []byte("stdout"), Line: fmt.Appendf(nil, "line %d", i)})
		}
		select {
		case <-b.release:
		case <-v.done:
			return
		}
		sess.SendControlMessage(frame.TypeConfigResult, &message.ConfigResult{OK: true})
		select { // a GOAWAY powers the VM off, as init does
		case <-sess.GoAwayReceived():
		case <-sess.Done():
		case <-v.done:
		}
	}()
	go func() { <-v.done; sess.Close() }()
	b.mu.Lock()
	b.vms = append(b.vms, v)
	b.mu.Unlock()
	b.started <- v
	return v, nil
}

type fakeVM struct {
	conn net.Conn
	done chan struct{}
	once sync.Once
}

func (v *fakeVM) Conn() io.ReadWriteCloser  { return v.conn }
func (v *fakeVM) Guest() backend.Guest      { return backend.Guest{} }
func (v *fakeVM) Network() *backend.Network { return nil }
func (v *fakeVM) Done() <-chan struct{}     { return v.done }
func (v *fakeVM) Err() error                { return nil }
func (v *fakeVM) Kill()                     { v.once.Do(func() { v.conn.Close(); close(v.done) }) }
func (v *fakeVM) Describe() string          { return "fake" }

func (v *fakeVM) ended() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
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
	be := newFakeBackend()
	m := newTestManager(t, be, Options{})
	p := &Program{ID: "slow", Persistent: true}
	ctx, cancel := context.WithCancel(context.Background())
	supervised := make(chan struct{})
	go func() { defer close(supervised); m.Persist(ctx, p) }()
	vm := <-be.started

	cancel() // what agent.Programs.Delete does, then Remove
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopCancel()
	if err := m.Remove(stopCtx, p); err != nil {
		t.Fatal(err)
	}
	if !vm.ended() {
		t.Fatal("the booting VM still runs after Remove returned")
	}
	close(be.release) // the boot would have finished now
	select {
	case <-supervised:
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor did not stop")
	}
	time.Sleep(50 * time.Millisecond)
	if r := m.Running(); len(r) != 0 {
		t.Fatalf("running after Remove: %v", r)
	}
	be.mu.Lock()
	n := len(be.vms)
	be.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d VMs started, want 1", n)
	}
	if _, err := m.Acquire(context.Background(), p); !errors.Is(err, ErrRemoved) {
		t.Fatalf("Acquire after Remove: %v", err)
	}
}

// Stop during an on-demand boot ends the VM, and the requests waiting on
// that boot get ErrStopped instead of an instance nobody tracks.
func TestStopDuringBootEndsTheVMAndItsWaiters(t *testing.T) {
	be := newFakeBackend()
	m := newTestManager(t, be, Options{})
	p := &Program{ID: "od"}
	got := make(chan error, 1)
	go func() {
		_, err := m.Acquire(context.Background(), p)
		got <- err
	}()
	vm := <-be.started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Stop(ctx, "od"); err != nil {
		t.Fatal(err)
	}
	if !vm.ended() {
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
	close(be.release)
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
	be := newFakeBackend()
	be.logs = 5000
	close(be.release)
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
	inst, err := m.Acquire(ctx, &Program{ID: "loud"})
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
	be := newFakeBackend()
	close(be.release)
	m := newTestManager(t, be, Options{IdleTimeout: -1})
	p := &Program{ID: "stopped", Interface: "asgi"}
	for round := range 10 { // the fake backend holds 16 started VMs
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
