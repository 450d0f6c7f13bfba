package tests

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/sandbox"
	"github.com/ferry-vm/ferry/host/lifecycle"
)

// countingBackend counts the VMs a backend starts.
type countingBackend struct {
	backend.Backend
	boots atomic.Int64
}

func (c *countingBackend) Start(ctx context.Context, spec backend.Spec) (backend.VM, error) {
	c.boots.Add(1)
	return c.Backend.Start(ctx, spec)
}

func newManager(t *testing.T, opt lifecycle.Options) (*lifecycle.Manager, *countingBackend, *lifecycle.Program) {
	t.Helper()
	requirePythonModules(t, "asyncio")
	agent, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	code := writeApp(t, map[string]string{"main.py": limitsApp})
	be := &countingBackend{Backend: sandbox.New(nil)}
	opt.Backend, opt.InitPath, opt.Log = be, filepath.Join(filepath.Dir(agent), "init"), slog.New(slog.DiscardHandler)
	m := lifecycle.New(opt)
	t.Cleanup(func() {
		m.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		m.StopAll(ctx)
	})
	return m, be, &lifecycle.Program{ID: "lc", Interface: "asgi", Entrypoint: "main:app", CodePath: code, Workers: 1}
}

// ping sends one request to the instance and checks the answer.
func ping(t *testing.T, inst *lifecycle.Instance) {
	t.Helper()
	if err := tryPing(inst); err != nil {
		t.Fatal(err)
	}
}

func tryPing(inst *lifecycle.Instance) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := request(ctx, inst.Session, "POST", "/", nil, []byte("abc"))
	if err != nil || r.status != 200 || string(r.body) != "3" {
		return fmt.Errorf("request to %s: %+v %v", inst.VM.Describe(), r, err)
	}
	return nil
}

// 20 concurrent first requests wait on one boot.
func TestConcurrentFirstRequestsShareOneBoot(t *testing.T) {
	m, be, p := newManager(t, lifecycle.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	insts := make([]*lifecycle.Instance, 20)
	var wg sync.WaitGroup
	for i := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst, err := m.Acquire(ctx, p)
			if err != nil {
				t.Error(err)
				return
			}
			defer inst.Release()
			if err := tryPing(inst); err != nil {
				t.Error(err)
			}
			insts[i] = inst
		}()
	}
	wg.Wait()
	if n := be.boots.Load(); n != 1 {
		t.Fatalf("%d boots for 20 concurrent first requests", n)
	}
	for _, inst := range insts {
		if inst != insts[0] {
			t.Fatal("requests were served by different instances")
		}
	}
}

// An idle program is stopped; the next request boots it again, unnoticed
// by the client.
func TestIdleStopThenTransparentRestart(t *testing.T) {
	m, be, p := newManager(t, lifecycle.Options{IdleTimeout: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	ping(t, inst)
	inst.Release()
	first := inst.VM
	waitFor(t, 20*time.Second, func() bool { return len(m.Running()) == 0 }, "the idle program was not stopped")
	select {
	case <-first.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the idle VM did not end")
	}
	inst, err = m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Release()
	ping(t, inst)
	if inst.VM == first || be.boots.Load() != 2 {
		t.Fatalf("expected a second boot, got %d boots", be.boots.Load())
	}
}

// A persistent program whose VM is killed comes back within its backoff.
func TestPersistentProgramComesBackAfterSIGKILL(t *testing.T) {
	m, be, p := newManager(t, lifecycle.Options{RestartBackoff: 200 * time.Millisecond})
	p.Persistent = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Persist(ctx, p)
	waitFor(t, time.Minute, func() bool { return len(m.Running()) == 1 }, "the persistent program did not start")
	inst, err := m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	ping(t, inst)
	inst.Release()
	var pid int
	if _, err := fmtSscanPid(inst.VM.Describe(), &pid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-inst.VM.Done()
	killed := time.Now()
	waitFor(t, time.Minute, func() bool { return be.boots.Load() == 2 && len(m.Running()) == 1 }, "the persistent program did not come back")
	again, err := m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Release()
	ping(t, again)
	t.Logf("back %s after SIGKILL (backoff 200ms)", time.Since(killed).Round(time.Millisecond))
}

// At the cap on running VMs, the least recently used idle program makes
// room; when every VM is busy the next boot is refused.
func TestMaxRunningEvictsIdleAndRefusesWhenBusy(t *testing.T) {
	m, be, a := newManager(t, lifecycle.Options{MaxRunning: 1})
	b := &lifecycle.Program{ID: "lc-b", Interface: a.Interface, Entrypoint: a.Entrypoint, CodePath: a.CodePath, Workers: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	instA, err := m.Acquire(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	ping(t, instA)
	instA.Release()
	instB, err := m.Acquire(ctx, b) // A is idle: it makes room
	if err != nil {
		t.Fatal(err)
	}
	defer instB.Release()
	ping(t, instB)
	select {
	case <-instA.VM.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the idle program was not stopped to make room")
	}
	if _, err := m.Acquire(ctx, a); !errors.Is(err, lifecycle.ErrTooMany) { // B is busy
		t.Fatalf("boot beyond the cap with every VM busy: %v", err)
	}
	if n := be.boots.Load(); n != 2 {
		t.Fatalf("%d boots", n)
	}
}
