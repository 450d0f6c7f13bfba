package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"github.com/ferry-vm/ferry/protocol/contract"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/protocol/message"
)

// call makes one request on the instance's session and checks the fake
// guest's answer.
func call(ctx context.Context, inst *Instance) error {
	st, err := inst.Session.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	body, err := io.ReadAll(st)
	if err != nil || rh.Status != 200 || string(body) != "ok" {
		return fmt.Errorf("answer %d %q %v", rh.Status, body, err)
	}
	return nil
}

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// 50 concurrent first requests make one boot, and all of them are
// served by its instance, each counted.
func TestFiftyConcurrentFirstRequestsMakeOneBoot(t *testing.T) {
	t.Parallel()
	be := newFakeBackend()
	m := newTestManager(t, be, Options{IdleTimeout: -1})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "popular"}
	ctx := timeout(t)
	const n = 50
	insts := make([]*Instance, n)
	var asking, wg sync.WaitGroup
	asking.Add(n)
	for i := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			asking.Done()
			inst, err := m.Acquire(ctx, p)
			if err != nil {
				t.Error(err)
				return
			}
			insts[i] = inst
		}()
	}
	<-be.Started()
	asking.Wait()
	time.Sleep(20 * time.Millisecond) // the last ones reach the boot's wait
	close(be.Gate)
	wg.Wait()
	if t.Failed() {
		return
	}
	if b := be.Boots(); b != 1 {
		t.Fatalf("%d boots for %d concurrent first requests", b, n)
	}
	for _, inst := range insts {
		if inst != insts[0] {
			t.Fatal("requests were given different instances")
		}
	}
	if got := insts[0].inflight.Load(); got != n {
		t.Fatalf("%d requests counted in flight, want %d", got, n)
	}
	if err := call(ctx, insts[0]); err != nil {
		t.Fatal(err)
	}
	for _, inst := range insts {
		inst.Release()
	}
	if got := insts[0].inflight.Load(); got != 0 {
		t.Fatalf("%d in flight after every Release", got)
	}
}

// Idle stop never stops a VM with a request in flight: one held for many
// idle periods keeps its VM, which stops once released; and requests
// racing the idle stop for a while always get a VM that stays up until
// they release it.
func TestIdleStopNeverStopsAVMWithARequestInFlight(t *testing.T) {
	t.Parallel()
	t.Run("held", func(t *testing.T) {
		be := &backendtest.Backend{}
		m := newTestManager(t, be, Options{IdleTimeout: 50 * time.Millisecond})
		p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "held"}
		ctx := timeout(t)
		inst, err := m.Acquire(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		vm := be.VMs()[0]
		time.Sleep(300 * time.Millisecond) // six idle timeouts
		if vm.Ended() || vm.GoneAway() || m.Instance(p.ID) != inst {
			t.Fatal("the VM of a request in flight was stopped for idleness")
		}
		if err := call(ctx, inst); err != nil {
			t.Fatal(err)
		}
		inst.Release()
		waitUntil(t, "the VM was not stopped once idle", func() bool { return vm.Ended() && len(m.Running()) == 0 })
		if !vm.GoneAway() {
			t.Fatal("the idle VM was killed instead of stopped with GOAWAY")
		}
	})
	t.Run("racing", func(t *testing.T) {
		be := &backendtest.Backend{}
		m := newTestManager(t, be, Options{IdleTimeout: time.Millisecond})
		p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "racing"}
		ctx := timeout(t)
		end := time.Now().Add(600 * time.Millisecond)
		var served atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) {
					inst, err := m.Acquire(ctx, p)
					if err != nil {
						t.Error(err)
						return
					}
					time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
					err = call(ctx, inst)
					stopped := inst.Session.Err() != nil
					select {
					case <-inst.VM.Done():
						stopped = true
					default:
					}
					inst.Release()
					if err != nil || stopped {
						t.Errorf("a request in flight lost its VM (stopped %v): %v", stopped, err)
						return
					}
					served.Add(1)
					time.Sleep(time.Duration(rand.IntN(80)) * time.Millisecond) // let idle stops happen
				}
			}()
		}
		wg.Wait()
		if be.Boots() < 2 {
			t.Fatalf("no idle stop happened during the race (%d boots, %d requests)", be.Boots(), served.Load())
		}
		t.Logf("%d requests over %d boots", served.Load(), be.Boots())
	})
}

// At max_running, the least recently used idle on-demand VM makes room;
// a VM with a request in flight or a persistent one never does, and when
// none can, the boot is refused with ErrTooMany.
func TestMaxRunningEvictsTheLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	be := &backendtest.Backend{}
	m := newTestManager(t, be, Options{IdleTimeout: -1, MaxRunning: 2})
	ctx := timeout(t)
	a, b, c := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "a"}, &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "b"}, &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "c"}
	use := func(p *Program) *Instance {
		t.Helper()
		inst, err := m.Acquire(ctx, p)
		if err != nil {
			t.Fatalf("%s: %v", p.ID, err)
		}
		time.Sleep(2 * time.Millisecond) // distinct last-use times
		inst.Release()
		return inst
	}
	instA := use(a)
	instB := use(b)
	use(a) // a used again: b is now the least recently used
	use(c) // b makes room
	waitUntil(t, "the least recently used VM was not stopped", func() bool {
		select {
		case <-instB.VM.Done():
			return true
		default:
			return false
		}
	})
	if m.Instance("a") != instA || m.Instance("b") != nil || m.Instance("c") == nil {
		t.Fatalf("running after the eviction: %v (want a and c)", m.Running())
	}

	// Both running VMs busy: no room.
	heldA, err := m.Acquire(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	heldC, err := m.Acquire(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Acquire(ctx, b); !errors.Is(err, ErrTooMany) {
		t.Fatalf("a boot beyond the cap with every VM busy: %v", err)
	}
	heldA.Release()
	heldC.Release()
	if n := be.Boots(); n != 3 {
		t.Fatalf("%d boots, want 3", n)
	}

	// A persistent program is never the one to make room.
	be2 := &backendtest.Backend{}
	m2 := newTestManager(t, be2, Options{IdleTimeout: -1, MaxRunning: 1})
	pctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m2.Persist(pctx, &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "p", Persistent: true})
	waitUntil(t, "the persistent program did not start", func() bool { return m2.Instance("p") != nil })
	if _, err := m2.Acquire(ctx, a); !errors.Is(err, ErrTooMany) {
		t.Fatalf("an idle persistent program was evicted: %v", err)
	}
}

// A persistent program whose VM dies is restarted after a backoff that
// doubles with each death, up to its maximum.
func TestPersistentProgramRestartedWithBackoff(t *testing.T) {
	t.Parallel()
	be := &backendtest.Backend{}
	base := 50 * time.Millisecond
	m := newTestManager(t, be, Options{RestartBackoff: base, MaxRestartBackoff: 4 * base})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "always", Persistent: true}
	ctx, cancel := context.WithCancel(context.Background())
	supervised := make(chan struct{})
	go func() { defer close(supervised); m.Persist(ctx, p) }()
	vm := <-be.Started()
	for i, want := range []time.Duration{base, 2 * base, 4 * base, 4 * base} {
		waitUntil(t, "the persistent program is not running", func() bool {
			inst := m.Instance(p.ID)
			return inst != nil && inst.VM == vm
		})
		died := time.Now()
		vm.Die(errors.New("exit status 137"))
		select {
		case vm = <-be.Started():
		case <-time.After(10 * time.Second):
			t.Fatalf("death %d: not restarted", i+1)
		}
		took := time.Since(died)
		if took < want || took > want+2*time.Second {
			t.Fatalf("death %d: restarted after %v, want %v", i+1, took, want)
		}
	}
	inst, err := m.Acquire(timeout(t), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := call(timeout(t), inst); err != nil {
		t.Fatal(err)
	}
	inst.Release()
	cancel()
	select {
	case <-supervised:
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor did not stop with its context")
	}
}

// A persistent program that fails to start is retried with the same
// backoff.
func TestPersistentProgramThatFailsToStartIsRetriedWithBackoff(t *testing.T) {
	t.Parallel()
	be := &backendtest.Backend{Refuse: &message.ConfigResult{Phase: []byte("app"), Message: []byte("no module named main")}}
	base := 50 * time.Millisecond
	m := newTestManager(t, be, Options{RestartBackoff: base, MaxRestartBackoff: 4 * base})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Persist(ctx, &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "broken", Persistent: true})
	var starts []time.Time
	for range 4 {
		select {
		case <-be.Started():
			starts = append(starts, time.Now())
		case <-time.After(10 * time.Second):
			t.Fatal("the failed program was not retried")
		}
	}
	for i, want := range []time.Duration{base, 2 * base, 4 * base} {
		if gap := starts[i+1].Sub(starts[i]); gap < want || gap > want+2*time.Second {
			t.Fatalf("retry %d after %v, want %v", i+1, gap, want)
		}
	}
	for _, vm := range be.VMs()[:3] {
		if !vm.Ended() {
			t.Fatal("a VM whose program failed to start was left running")
		}
	}
}

// Deleting an on-demand program while it boots leaves no VM: the request
// waiting on the boot gets ErrStopped, and no later request starts it.
func TestRemoveDuringOnDemandBootLeavesNoVM(t *testing.T) {
	t.Parallel()
	be := newFakeBackend()
	m := newTestManager(t, be, Options{IdleTimeout: -1})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "gone"}
	waiting := acquiring(m, p)
	vm := <-be.Started()
	if err := m.Remove(timeout(t), p); err != nil {
		t.Fatal(err)
	}
	if !vm.Ended() {
		t.Fatal("the booting VM still runs after Remove returned")
	}
	if err := <-waiting; !errors.Is(err, ErrStopped) {
		t.Fatalf("the waiting request got %v", err)
	}
	close(be.Gate)
	if _, err := m.Acquire(timeout(t), p); !errors.Is(err, ErrRemoved) {
		t.Fatalf("Acquire after Remove: %v", err)
	}
	if be.Live() != 0 || len(m.Running()) != 0 || be.Boots() != 1 {
		t.Fatalf("after Remove: %d VMs live, running %v, %d boots", be.Live(), m.Running(), be.Boots())
	}
}

// A refused configuration is a contract.ConfigError with init's phase,
// field, message and detail; its VM is killed, and OnBoot hears of it.
func TestRefusedConfigurationIsAConfigError(t *testing.T) {
	t.Parallel()
	be := &backendtest.Backend{Refuse: &message.ConfigResult{Phase: []byte("app"), Field: []byte("entrypoint"),
		Message: []byte("module main has no attribute app"), Detail: []byte("Traceback ...")}}
	var booted atomic.Value
	m := newTestManager(t, be, Options{OnBoot: func(id string, took time.Duration, _ []message.TimelineEntry, err error) {
		booted.Store(fmt.Sprint(id, " ", err))
	}})
	_, err := m.Acquire(timeout(t), &Program{ID: "bad", Interface: contract.InterfaceASGI, Entrypoint: "main:app"})
	berr, ok := errors.AsType[*contract.ConfigError](err)
	if !ok || berr.Phase != "app" || berr.Field != "entrypoint" || berr.Detail != "Traceback ..." ||
		!strings.Contains(err.Error(), "module main has no attribute app") {
		t.Fatalf("got %v", err)
	}
	if vm := be.VMs()[0]; !vm.Ended() {
		t.Fatal("the VM of a failed boot still runs")
	}
	if got, _ := booted.Load().(string); !strings.HasPrefix(got, "bad app: entrypoint: module main has no attribute app") {
		t.Fatalf("OnBoot got %q", got)
	}
}

// A VM that ends on its own is forgotten; the next request boots a new
// one. A boot with no configuration result within BootTimeout fails and
// leaves no VM.
func TestEndedVMIsForgottenAndBootsTimeOut(t *testing.T) {
	t.Parallel()
	be := &backendtest.Backend{}
	m := newTestManager(t, be, Options{IdleTimeout: -1})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "crashy"}
	inst, err := m.Acquire(timeout(t), p)
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
	be.VMs()[0].Die(errors.New("exit status 1"))
	waitUntil(t, "the ended VM is still counted as running", func() bool { return m.Instance(p.ID) == nil })
	again, err := m.Acquire(timeout(t), p)
	if err != nil || again == inst || be.Boots() != 2 {
		t.Fatalf("after the crash: %v, %d boots", err, be.Boots())
	}
	again.Release()

	slow := newFakeBackend() // never answers
	ms := newTestManager(t, slow, Options{BootTimeout: 100 * time.Millisecond})
	if _, err := ms.Acquire(timeout(t), p); err == nil || !strings.Contains(err.Error(), "boot timeout") {
		t.Fatalf("a boot that never ends: %v", err)
	}
	if slow.Live() != 0 {
		t.Fatal("the VM of a timed-out boot still runs")
	}
}

// TryAcquire never boots: it returns nothing for a stopped program, and
// the running instance, counted like Acquire's, for a running one (its
// VM is not stopped for idleness until Release).
func TestTryAcquireTakesOnlyARunningInstance(t *testing.T) {
	be := &backendtest.Backend{}
	m := newTestManager(t, be, Options{IdleTimeout: 50 * time.Millisecond})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "try"}
	if inst := m.TryAcquire(p); inst != nil || len(be.VMs()) != 0 {
		t.Fatalf("TryAcquire of a stopped program: %v, %d VMs", inst, len(be.VMs()))
	}
	ctx := timeout(t)
	first, err := m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	held := m.TryAcquire(p)
	if held != first {
		t.Fatalf("TryAcquire of a running program: %v, want %v", held, first)
	}
	first.Release()
	vm := be.VMs()[0]
	time.Sleep(300 * time.Millisecond) // six idle timeouts
	if vm.Ended() {
		t.Fatal("the VM TryAcquire holds was stopped for idleness")
	}
	held.Release()
	waitUntil(t, "the VM was not stopped once idle", func() bool { return vm.Ended() && len(m.Running()) == 0 })
	if inst := m.TryAcquire(p); inst != nil {
		t.Fatal("TryAcquire of a program stopped for idleness")
	}
}
