// Package lifecycle starts and stops programs' VMs for the host agent: it
// boots a VM through a backend, greets its init, sends the configuration
// and keeps the session. Concurrent first requests share one boot
// (single-flight); a VM that ends is forgotten, so the next request starts
// a new one. Stopping or removing a program while it boots ends that boot
// and its VM. A program's output is handed off the session's read loop and
// rate-limited (output.go).
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/firewall"
	"github.com/ferry-vm/ferry/host/dataplane"
	"github.com/ferry-vm/ferry/host/guestlink"
	"github.com/ferry-vm/ferry/internal/supervise"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Program is what the agent knows about one program.
type Program struct {
	ID string
	// Persistent programs are started at once and restarted when they
	// end; they are never stopped for being idle.
	Persistent bool
	Interface  string // contract.InterfaceASGI, InterfaceExecutable or InterfaceInstance
	Entrypoint string
	// CodePath is the code on the host: a directory, or a single file
	// (which the VM sees under the name contract.FileName gives it).
	CodePath string
	// CodeEncoding is how the code is stored: empty (a directory or one
	// file), contract.EncodingZip or contract.EncodingSquashfs
	// (backend.Spec.CodeEncoding).
	CodeEncoding string
	// Refs are the objects fetched from the store at each boot
	// (Options.Objects) and pinned while the VM runs.
	Refs Sources
	// Data is unpacked at /data in the VM (its Path comes from Refs.Data
	// when that is set).
	Data    *backend.Data
	Workers int
	Python  string
	Env     map[string]string
	// Network gives the VM an interface with IPv4 and IPv6 addresses;
	// Firewall says what it admits (Internet, AllowedPorts, Forwards).
	Network  bool
	Firewall firewall.VM
	// AuthorizedKeys are written for root's SSH logins in the VM.
	AuthorizedKeys []string
	// Volumes are the manifest's volumes; backends that cannot provide
	// them refuse to start the program.
	Volumes []backend.Volume
	// VCPUs and MemoryMiB size the VM (0: the backend's default).
	VCPUs, MemoryMiB int
	// Rootfs and Kernel override the backend's image and kernel.
	Rootfs, Kernel string
	// RootSizeMiB, for an instance, keeps its root from one boot to the
	// next on a disk of that size (backend.Spec.RootSizeMiB); 0: not kept.
	RootSizeMiB int

	removed bool // guarded by Manager.mu: Remove was called, no more boots
}

// Instance is a running VM of a program with its session to init and,
// for an ASGI program on a backend whose VMs pass worker channels, the
// sessions with its workers (the data plane).
type Instance struct {
	Program  *Program
	VM       backend.VM
	Session  *mux.Session
	Timeline []message.TimelineEntry
	Started  time.Time
	// ColdStart is how long the boot took, from asking the backend for a
	// VM to init's configuration result.
	ColdStart time.Duration

	inflight atomic.Int64
	lastUsed atomic.Int64 // unix nanos when the last request ended
	output   *outputPump  // nil without Options.OnOutput
	release  func()       // unpins the objects fetched for this VM
	workers  *dataplane.Set
	direct   atomic.Int64 // requests sent to a worker's session
	viaInit  atomic.Int64 // requests sent to init's
}

// Pick returns the session one request goes to: the ASGI worker session
// with the fewest requests outstanding, or init's session when no worker
// session is live (executables, VMs without worker channels, a worker
// restarting alone). done ends the request's count; call it once the
// request's stream is finished.
func (i *Instance) Pick() (sess *mux.Session, done func()) {
	if i.workers != nil {
		if sess, done := i.workers.Pick(); sess != nil {
			i.direct.Add(1)
			return sess, done
		}
	}
	i.viaInit.Add(1)
	return i.Session, func() {}
}

// Workers returns the instance's worker channels, nil when its requests
// all go through init.
func (i *Instance) Workers() *dataplane.Set { return i.workers }

// CountDirect counts a request sent to a worker's channel by a front
// that adopted the channels (DataPlane's Direct).
func (i *Instance) CountDirect() { i.direct.Add(1) }

// DataPlane says how an instance's requests travel.
type DataPlane struct {
	// Workers is how many worker sessions are live.
	Workers int `json:"workers"`
	// Direct and ViaInit count the requests Pick sent to a worker's
	// session and to init's.
	Direct  int64 `json:"direct_requests"`
	ViaInit int64 `json:"via_init_requests"`
}

// DataPlane returns the instance's worker sessions and request counts.
func (i *Instance) DataPlane() DataPlane {
	d := DataPlane{Direct: i.direct.Load(), ViaInit: i.viaInit.Load()}
	if i.workers != nil {
		d.Workers = i.workers.Len()
	}
	return d
}

// closeWorkers ends the instance's worker sessions.
func (i *Instance) closeWorkers() {
	if i.workers != nil {
		i.workers.Close()
	}
}

// Release marks the end of a request that Acquire counted.
func (i *Instance) Release() {
	i.lastUsed.Store(time.Now().UnixNano())
	i.inflight.Add(-1)
}

// Options configure a Manager.
type Options struct {
	Backend     backend.Backend
	InitPath    string
	Log         *slog.Logger
	BootTimeout time.Duration
	// BootProgress is how often a boot in progress is reported in the log
	// (default DefaultBootProgress; negative: never).
	BootProgress time.Duration
	// IdleTimeout stops an on-demand program's VM after that long without
	// requests (default 60 s; negative: never).
	IdleTimeout time.Duration
	// RestartBackoff is the first delay before restarting a persistent
	// program that ended (default 1 s), doubling up to MaxRestartBackoff
	// (default 1 min).
	RestartBackoff, MaxRestartBackoff time.Duration
	// MaxRunning caps the VMs running (or booting) at once; 0: no cap.
	// At the cap, the least recently used idle on-demand VM is stopped to
	// make room; if there is none, Acquire fails with ErrTooMany.
	MaxRunning int
	// OnOutput receives the program's output lines (LOG frames and
	// console lines), from a goroutine of each VM's own, never from the
	// session's read loop: at most OutputRate lines per second (default
	// DefaultOutputRate; negative: no limit), the others dropped, counted
	// and reported by a line of source "ferry" every few seconds. When
	// OnOutput is slow, the lines that find its queue full are dropped too.
	OnOutput   func(programID string, l message.Log)
	OutputRate float64
	// OnOutputDropped is told how many output lines were dropped (for
	// metrics), along with those reports.
	OnOutputDropped func(programID string, n int)
	// OnBoot is told about every boot attempt's outcome (for metrics):
	// how long it took and, when it succeeded, init's boot timeline.
	OnBoot func(programID string, took time.Duration, timeline []message.TimelineEntry, err error)
	// WorkerChannels, when set, takes over the data channels of ASGI
	// workers (dataplane.Options.Adopter): the event-loop front.
	WorkerChannels dataplane.Adopter
	// GuestAPI returns the handler of the guest API calls (streams init
	// opens toward the host, protocol/SPEC.md §5.7) of one boot of a
	// program. It is called once per boot, right after the backend
	// started the VM and before init is configured (an app may call the
	// API while it starts): only inst.Program and inst.VM are set then,
	// and the handler must read nothing else of inst. nil: every call is
	// answered 503 (guestlink.NoAPI). At most contract.MaxAPIStreams calls
	// of one VM run at once.
	GuestAPI func(inst *Instance) http.Handler
	// Objects fetches the objects programs name by ref; nil: such
	// programs fail to boot with ErrNoStore.
	Objects Objects
}

// Manager runs programs' VMs.
type Manager struct {
	opt Options
	log *slog.Logger

	mu       sync.Mutex
	running  map[string]*Instance
	starting map[string]*boot
	failed   map[string]BootFailure // the last boot's, until one succeeds

	closed    chan struct{}
	closeOnce sync.Once
}

type boot struct {
	done   chan struct{}
	inst   *Instance
	err    error
	cancel context.CancelFunc
	// stopped (guarded by Manager.mu) is set by Stop during the boot: the
	// boot is cancelled and a VM that got ready anyway is stopped.
	stopped bool
}

// ErrStopped is the error of a boot that Stop or Remove ended.
var ErrStopped = errors.New("the program was stopped while it was starting")

// ErrRemoved is returned by Acquire for a program that was removed.
var ErrRemoved = errors.New("the program was removed")

// New returns a manager.
func New(opt Options) *Manager {
	if opt.BootProgress == 0 {
		opt.BootProgress = DefaultBootProgress
	}
	if opt.BootTimeout == 0 {
		opt.BootTimeout = 2 * time.Minute
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.IdleTimeout == 0 {
		opt.IdleTimeout = 60 * time.Second
	}
	if opt.RestartBackoff == 0 {
		opt.RestartBackoff = time.Second
	}
	if opt.MaxRestartBackoff == 0 {
		opt.MaxRestartBackoff = time.Minute
	}
	m := &Manager{opt: opt, log: opt.Log, running: map[string]*Instance{}, starting: map[string]*boot{}, failed: map[string]BootFailure{}, closed: make(chan struct{})}
	if opt.IdleTimeout > 0 {
		go m.idleLoop()
	}
	return m
}

// Acquire returns the program's running instance, starting one if needed,
// and counts the caller against it until Release: a counted instance is
// never stopped for being idle nor to make room. Concurrent callers for
// the same program wait on one boot. No boot starts once ctx has ended or
// the program was removed (ErrRemoved).
func (m *Manager) Acquire(ctx context.Context, p *Program) (*Instance, error) {
	for {
		inst, err := m.get(ctx, p)
		if err != nil {
			return nil, err
		}
		m.mu.Lock()
		live := m.running[p.ID] == inst
		if live {
			inst.inflight.Add(1)
		}
		m.mu.Unlock()
		if live {
			return inst, nil
		}
		// Stopped for idleness between get and here: boot again.
	}
}

// TryAcquire is Acquire without waiting: the program's running instance,
// counted until Release, or nil when none is running (booting, stopped
// or removed). It never starts a VM.
func (m *Manager) TryAcquire(p *Program) *Instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	inst := m.running[p.ID]
	if inst == nil || p.removed {
		return nil
	}
	inst.inflight.Add(1)
	return inst
}

// ErrNotRunning is AcquireRunning's answer for a program with no VM
// running or booting.
var ErrNotRunning = errors.New("the program is not running here")

// AcquireRunning is Acquire for a program whose VMs only its supervisor
// starts (a persistent program in a cluster): it takes the running
// instance, or waits for a boot already under way, and never starts one
// (ErrNotRunning).
func (m *Manager) AcquireRunning(ctx context.Context, p *Program) (*Instance, error) {
	for {
		m.mu.Lock()
		inst, b := m.running[p.ID], m.starting[p.ID]
		if inst != nil {
			inst.inflight.Add(1)
			m.mu.Unlock()
			return inst, nil
		}
		m.mu.Unlock()
		if b == nil {
			return nil, ErrNotRunning
		}
		select {
		case <-b.done:
			if b.err != nil {
				return nil, b.err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Instance returns the program's running instance, or nil, for reports:
// it does not hold the VM, which may stop at any moment. To send it
// requests, Acquire it.
func (m *Manager) Instance(id string) *Instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.running[id]
}

// Running returns the ids of programs with a running VM.
func (m *Manager) Running() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.running))
	for id := range m.running {
		ids = append(ids, id)
	}
	return ids
}

// idleLoop stops on-demand VMs that served nothing for IdleTimeout.
func (m *Manager) idleLoop() {
	tick := time.NewTicker(max(m.opt.IdleTimeout/4, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-m.closed:
			return
		case <-tick.C:
		}
		now := time.Now().UnixNano()
		var idle []*Instance
		m.mu.Lock()
		for id, inst := range m.running {
			if inst.Program.Persistent || inst.inflight.Load() > 0 || now-inst.lastUsed.Load() < int64(m.opt.IdleTimeout) {
				continue
			}
			delete(m.running, id) // new requests boot a new VM
			idle = append(idle, inst)
		}
		m.mu.Unlock()
		for _, inst := range idle {
			m.log.Info("stopping idle program", "program", inst.Program.ID, "idle_for", m.opt.IdleTimeout)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				_ = stopInstance(ctx, inst)
			}()
		}
	}
}

// Persist keeps a persistent program running until ctx ends: started now,
// restarted with exponential backoff whenever its VM ends (RestartBackoff
// doubling to MaxRestartBackoff, from RestartBackoff again after a run of
// ten times MaxRestartBackoff).
func (m *Manager) Persist(ctx context.Context, p *Program) {
	policy := supervise.Policy{Initial: m.opt.RestartBackoff, Max: m.opt.MaxRestartBackoff, ResetAfter: 10 * m.opt.MaxRestartBackoff}
	var inst *Instance
	supervise.Run(ctx, policy, supervise.Task{
		Start: func(ctx context.Context) error {
			i, err := m.get(ctx, p) // persistent: never stopped for idleness, so not counted
			if errors.Is(err, ErrRemoved) {
				return supervise.ErrStop
			}
			inst = i
			return err
		},
		Wait: func(ctx context.Context) error {
			select {
			case <-inst.VM.Done():
				return inst.VM.Err()
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		Ended: func(vmErr error, in time.Duration) {
			m.log.Warn("persistent program ended; restarting", "program", p.ID, "vm_err", vmErr, "in", in)
		},
		Failed: func(err error, in time.Duration) {
			m.log.Error("persistent program failed to start", "program", p.ID, "err", err, "retry_in", in)
		},
	})
}

// Close stops the manager's background work (not the VMs: see StopAll).
func (m *Manager) Close() {
	m.closeOnce.Do(func() { close(m.closed) })
}

// ErrTooMany is returned when the cap on running VMs is reached and every
// running VM is busy or persistent.
var ErrTooMany = errors.New("too many programs running on this node")

// makeRoomLocked enforces MaxRunning before a boot: it stops the least
// recently used idle on-demand VM if the cap is reached.
func (m *Manager) makeRoomLocked() error {
	if m.opt.MaxRunning <= 0 || len(m.running)+len(m.starting) < m.opt.MaxRunning {
		return nil
	}
	var victim *Instance
	for _, inst := range m.running {
		if inst.Program.Persistent || inst.inflight.Load() > 0 {
			continue
		}
		if victim == nil || inst.lastUsed.Load() < victim.lastUsed.Load() {
			victim = inst
		}
	}
	if victim == nil {
		return ErrTooMany
	}
	delete(m.running, victim.Program.ID)
	m.log.Info("stopping the least recently used program to make room", "program", victim.Program.ID, "max_running", m.opt.MaxRunning)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = stopInstance(ctx, victim)
	}()
	return nil
}

// get returns the program's running instance, starting one if needed.
// Concurrent callers for the same program wait on one boot. No boot starts
// once ctx has ended or the program was removed. It does not count the
// caller: an on-demand instance it returns may be stopped for idleness or
// to make room at any moment, so callers outside Persist use Acquire.
func (m *Manager) get(ctx context.Context, p *Program) (*Instance, error) {
	m.mu.Lock()
	if p.removed {
		m.mu.Unlock()
		return nil, ErrRemoved
	}
	if inst := m.running[p.ID]; inst != nil {
		m.mu.Unlock()
		return inst, nil
	}
	b := m.starting[p.ID]
	if b == nil {
		// Checked under mu: a supervisor whose context a Remove cancelled
		// cannot start a boot that the Remove would not see.
		if err := ctx.Err(); err != nil {
			m.mu.Unlock()
			return nil, err
		}
		if err := m.makeRoomLocked(); err != nil {
			m.mu.Unlock()
			return nil, err
		}
		bctx, cancel := context.WithTimeout(context.Background(), m.opt.BootTimeout)
		b = &boot{done: make(chan struct{}), cancel: cancel}
		m.starting[p.ID] = b
		go m.boot(bctx, p, b)
	}
	m.mu.Unlock()
	select {
	case <-b.done:
		return b.inst, b.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// boot runs one boot for get; ctx is cancelled by Stop.
func (m *Manager) boot(ctx context.Context, p *Program, b *boot) {
	defer b.cancel()
	began := time.Now()
	inst, err := m.start(ctx, p)
	m.mu.Lock()
	delete(m.starting, p.ID)
	stopped := b.stopped
	switch {
	case err == nil && !stopped:
		m.running[p.ID] = inst
		delete(m.failed, p.ID)
	case err != nil && !stopped && !p.removed:
		m.failed[p.ID] = BootFailure{Err: err.Error(), At: time.Now()}
	}
	m.mu.Unlock()
	if stopped {
		if err == nil {
			// Ready just as it was stopped: it never serves.
			sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_ = stopInstance(sctx, inst)
			cancel()
			inst.Session.Close()
			inst.closeWorkers()
			inst.output.close()
			inst.unpin()
		}
		inst, err = nil, ErrStopped
	}
	if m.opt.OnBoot != nil {
		var timeline []message.TimelineEntry
		if inst != nil {
			timeline = inst.Timeline
		}
		m.opt.OnBoot(p.ID, time.Since(began), timeline, err)
	}
	b.inst, b.err = inst, err
	close(b.done)
	if err != nil {
		if stopped {
			m.log.Info("program stopped while starting", "program", p.ID)
		} else {
			m.log.Error("program did not start", "program", p.ID, "err", err)
		}
		return
	}
	go m.watch(inst)
}

// BootFailure is how a program's last boot failed.
type BootFailure struct {
	Err string
	At  time.Time
}

// LastBootFailure returns how the program's last boot failed, when it did
// (a successful boot or Remove forgets it).
func (m *Manager) LastBootFailure(id string) (BootFailure, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.failed[id]
	return f, ok
}

// spec is the backend's spec of p, before its refs are resolved.
func (m *Manager) spec(p *Program) backend.Spec {
	return backend.Spec{ProgramID: p.ID, InitPath: m.opt.InitPath, CodePath: p.CodePath, CodeFile: contract.FileName(p.Interface, p.Entrypoint),
		Network: p.Network, Firewall: p.Firewall, Volumes: p.Volumes, VCPUs: p.VCPUs, MemoryMiB: p.MemoryMiB, Rootfs: p.Rootfs, Kernel: p.Kernel,
		Instance: p.Interface == contract.InterfaceInstance, RootSizeMiB: p.RootSizeMiB}
}

// CheckSpace refuses, with a *backend.SpaceError, a program whose
// volumes would not fit on this host's disk now, beside what those of the
// running VMs may still take, when the backend can tell
// (backend.SpaceChecker). Each boot checks again:
// the free space may have changed since, and ephemeral volumes are new at
// every boot.
func (m *Manager) CheckSpace(p *Program) error {
	c, ok := m.opt.Backend.(backend.SpaceChecker)
	if !ok {
		return nil
	}
	return c.CheckSpace(m.spec(p))
}

// start boots a VM and configures its init. A configuration that the
// agent's own validation or init refused, or whose program failed to
// start, is a *contract.ConfigError.
func (m *Manager) start(ctx context.Context, p *Program) (*Instance, error) {
	started := time.Now()
	log := m.log.With("program", p.ID)
	spec := m.spec(p)
	spec.Log = log
	progress := startBootProgress(log, m.opt.Backend.Name(), m.opt.BootProgress)
	defer progress.done()
	var output *outputPump
	release, err := m.resolve(ctx, p, &spec)
	if err != nil {
		return nil, err
	}
	if m.opt.OnOutput != nil {
		output = newOutputPump(p.ID, m.opt.OutputRate, m.opt.OnOutput, m.opt.OnOutputDropped)
	}
	spec.Console = func(line string) {
		progress.consoleLine(line)
		if output != nil {
			output.line(message.Log{Source: []byte("console"), UnixNano: uint64(time.Now().UnixNano()), Line: []byte(line)})
		}
	}
	vm, err := m.opt.Backend.Start(ctx, spec)
	if err != nil {
		output.close()
		release()
		return nil, err
	}
	progress.started(vm.Describe())
	// A VM that ends while init is being configured explains itself
	// better than the closed session.
	cctx, vmEnded := context.WithCancelCause(ctx)
	defer vmEnded(nil)
	go func() {
		select {
		case <-vm.Done():
			cause := errors.New("the VM ended while starting")
			if err := vm.Err(); err != nil {
				cause = fmt.Errorf("%w: %w", cause, err)
			}
			vmEnded(cause)
		case <-cctx.Done():
		}
	}()
	inst := &Instance{Program: p, VM: vm, Started: started, output: output, release: release}
	if cv, ok := vm.(backend.ChannelVM); ok && p.Interface == contract.InterfaceASGI && cv.WorkerChannels() != nil {
		// Received from the start: init passes each worker's channel as
		// the worker comes up, before it answers the configuration.
		inst.workers = dataplane.New(cv.WorkerChannels(), dataplane.Options{Log: log, Agent: hostAgent, Adopter: m.opt.WorkerChannels})
	}
	var api http.Handler
	if m.opt.GuestAPI != nil {
		api = m.opt.GuestAPI(inst)
	}
	sess, timeline, err := contract.Configure(cctx, vm.Conn(), mux.Config{
		Agent:      hostAgent,
		Logger:     log,
		MaxStreams: contract.MaxAPIStreams,
		Handler:    guestlink.Handler(api, log),
		OnControl: func(t frame.Type, payload []byte) {
			// On the read loop: a line over the rate costs no decoding,
			// and none ever waits for OnOutput.
			if t != frame.TypeLog || output == nil || !output.admit() {
				return
			}
			var l message.Log
			if err := l.Unmarshal(append([]byte(nil), payload...)); err == nil {
				output.push(l)
			}
		},
	}, guestConfig(p, vm.Guest(), vm.Network()))
	if err != nil {
		vm.Kill()
		inst.closeWorkers()
		select { // gone before Stop returns, as far as SIGKILL allows
		case <-vm.Done():
		case <-time.After(10 * time.Second):
			log.Warn("the VM did not end after it was killed", "vm", vm.Describe())
		}
		output.close()
		release()
		if _, refused := errors.AsType[*contract.ConfigError](err); refused {
			return nil, err
		}
		switch ctx.Err() {
		case context.Canceled:
			return nil, ErrStopped
		case context.DeadlineExceeded:
			return nil, fmt.Errorf("init (%s) was not configured within the boot timeout: %w", vm.Describe(), err)
		}
		return nil, fmt.Errorf("init (%s): %w", vm.Describe(), err)
	}
	inst.Session, inst.Timeline, inst.ColdStart = sess, timeline, time.Since(started)
	inst.lastUsed.Store(time.Now().UnixNano())
	log.Info("program started", "vm", vm.Describe(), "cold_start", inst.ColdStart.Round(time.Millisecond), "timeline", message.FormatTimeline(timeline))
	return inst, nil
}

// hostAgent names the agent in the HELLO of its sessions.
const hostAgent = "ferry-host-agent"

// guestConfig is init's configuration for p, with the code and volumes
// where the VM has them.
func guestConfig(p *Program, g backend.Guest, nw *backend.Network) *contract.Config {
	c := &contract.Config{
		ProgramID: p.ID, Interface: p.Interface, Entrypoint: p.Entrypoint,
		Code: g.Code, Volumes: g.Volumes, InputData: g.Data,
		Workers: p.Workers, Python: p.Python, Env: p.Env, AuthorizedKeys: p.AuthorizedKeys,
	}
	if nw != nil {
		c.Network = &contract.Network{
			IPv4: &contract.Address{Address: nw.GuestIPv4, Gateway: hostAddr(nw.HostIPv4)},
			IPv6: &contract.Address{Address: nw.GuestIPv6, Gateway: hostAddr(nw.HostIPv6)},
			DNS:  nw.DNS,
		}
	}
	return c
}

// watch forgets an instance once its VM or session ends.
func (m *Manager) watch(inst *Instance) {
	select {
	case <-inst.VM.Done():
	case <-inst.Session.Done():
		inst.VM.Kill()
	}
	inst.Session.Close()
	inst.closeWorkers()
	inst.output.close()
	inst.unpin()
	m.forget(inst)
	m.log.Info("program stopped", "program", inst.Program.ID, "vm", inst.VM.Describe())
}

// forget drops an instance whose VM has ended from the running ones.
func (m *Manager) forget(inst *Instance) {
	m.mu.Lock()
	if m.running[inst.Program.ID] == inst {
		delete(m.running, inst.Program.ID)
	}
	m.mu.Unlock()
}

// Stop stops a program's VM gracefully: GOAWAY, init stops the app and
// powers off; killed when ctx ends first. A boot in progress is cancelled
// (its VM killed) and waited for; its waiters get ErrStopped.
func (m *Manager) Stop(ctx context.Context, id string) error {
	m.mu.Lock()
	inst := m.running[id]
	b := m.starting[id]
	if b != nil {
		b.stopped = true
		b.cancel()
	}
	m.mu.Unlock()
	if b != nil {
		select {
		case <-b.done:
		case <-ctx.Done():
			return fmt.Errorf("the program's boot did not end in time: %w", ctx.Err())
		}
	}
	if inst == nil {
		return nil
	}
	err := stopInstance(ctx, inst)
	// The VM has ended: it is no longer running when Stop returns, even if
	// its watcher has not yet seen it.
	m.forget(inst)
	return err
}

// Remove stops p's VM (or its boot) as Stop does, and makes every later
// Acquire of p fail with ErrRemoved, so that no request or supervisor that
// still holds p can start it again.
func (m *Manager) Remove(ctx context.Context, p *Program) error {
	m.mu.Lock()
	p.removed = true
	delete(m.failed, p.ID)
	m.mu.Unlock()
	return m.Stop(ctx, p.ID)
}

// stopInstance sends GOAWAY (init stops the app and powers off) and waits
// for the VM to end, killing it when ctx ends first.
func stopInstance(ctx context.Context, inst *Instance) error {
	_ = inst.Session.GoAway(frame.CodeNoError, "stopping")
	select {
	case <-inst.VM.Done():
		return nil
	case <-ctx.Done():
		inst.VM.Kill()
		<-inst.VM.Done()
		return errors.New("the VM did not stop in time and was killed")
	}
}

// StopAll stops every running program, and ends the boots in progress.
func (m *Manager) StopAll(ctx context.Context) {
	m.mu.Lock()
	ids := make([]string, 0, len(m.running)+len(m.starting))
	for id := range m.running {
		ids = append(ids, id)
	}
	for id := range m.starting {
		if m.running[id] == nil {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); _ = m.Stop(ctx, id) }()
	}
	wg.Wait()
}

// hostAddr drops the prefix length of an address.
func hostAddr(withPrefix string) string {
	addr, _, _ := strings.Cut(withPrefix, "/")
	return addr
}
