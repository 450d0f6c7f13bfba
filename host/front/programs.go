package front

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/ferry-vm/ferry/host/backend/firewall"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/internal/logring"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
)

// Programs is the set of deployed programs: their routes, their output
// logs, and the supervision of persistent ones. It is safe for concurrent
// use by the router and the admin API.
type Programs struct {
	Manager *lifecycle.Manager
	// Limits are the per-program request limits of programs whose
	// manifest sets none (defaults filled in); set before Deploy.
	Limits RequestLimits
	// ClusterPersists says that the cluster's supervisor (host/persist)
	// runs the persistent programs, on one node at a time: Deploy then
	// starts no supervisor of its own. Set before Deploy.
	ClusterPersists bool
	// Changed, when set, is told of every deploy (with the manifest) and
	// delete (nil), in the order of the changes: host/trigger follows the
	// programs' schedules with it. It is called with the set locked and
	// must not call back into it. Set before Deploy.
	Changed func(id string, m *manifest.Program)

	mu        sync.RWMutex
	routes    map[string]*Route
	logs      map[string]*logring.Ring
	cancel    map[string]context.CancelFunc // persistent supervisors
	supervise map[string]chan struct{}      // closed when a supervisor returned
}

// Errors of Deploy and Delete.
var (
	ErrExists   = errors.New("a program with this id is already deployed")
	ErrNotFound = errors.New("no such program")
)

// NewPrograms returns an empty set.
func NewPrograms(m *lifecycle.Manager) *Programs {
	return &Programs{Manager: m, routes: map[string]*Route{}, logs: map[string]*logring.Ring{}, cancel: map[string]context.CancelFunc{},
		supervise: map[string]chan struct{}{}}
}

// Route returns a program's route, or nil.
func (ps *Programs) Route(id string) *Route {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return ps.routes[id]
}

// IDs returns the deployed program ids, sorted.
func (ps *Programs) IDs() []string {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	ids := make([]string, 0, len(ps.routes))
	for id := range ps.routes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Deploy adds a validated manifest; persistent programs start now.
func (ps *Programs) Deploy(id string, m *manifest.Program) error {
	if err := manifest.ValidateProgram(id, m); err != nil {
		return err
	}
	prog := programOf(id, m)
	limits := ps.Limits
	if m.Limits != nil {
		if m.Limits.MaxConcurrent > 0 {
			limits.MaxConcurrent = m.Limits.MaxConcurrent
		}
		if m.Limits.QueueTimeout.Duration > 0 {
			limits.QueueTimeout = m.Limits.QueueTimeout.Duration
		}
	}
	route := &Route{Program: prog, HTTP: m.On.HTTP, Timeout: m.Resources.Timeout(), Limiter: NewLimiter(limits)}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.routes[id] != nil {
		return ErrExists
	}
	ps.routes[id] = route
	if ps.logs[id] == nil {
		ps.logs[id] = logring.NewRing(2000, 1<<20)
	}
	if prog.Persistent && !ps.ClusterPersists {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		ps.cancel[id], ps.supervise[id] = cancel, done
		go func() {
			defer close(done)
			ps.Manager.Persist(ctx, prog)
		}()
	}
	if ps.Changed != nil {
		ps.Changed(id, m)
	}
	return nil
}

// programOf is the lifecycle's program of a validated manifest.
func programOf(id string, m *manifest.Program) *lifecycle.Program {
	prog := &lifecycle.Program{ID: id, Entrypoint: m.Code.Entrypoint,
		Env: m.Variables, Persistent: m.Persistent(), Workers: m.Resources.WorkerCount(), Network: m.Environment.Interface(), Firewall: firewallOf(m.Environment),
		AuthorizedKeys: m.AuthorizedKeys, MemoryMiB: m.Resources.Memory, VCPUs: m.Resources.VCPUs}
	if m.Runtime != nil {
		prog.Rootfs, prog.Kernel, prog.Python = m.Runtime.Rootfs, m.Runtime.Kernel, m.Runtime.Python
	}
	programSources(prog, m)
	if m.IsInstance() {
		prog.Interface, prog.RootSizeMiB = contract.InterfaceInstance, m.RootSizeMiB()
		if m.Rootfs != nil {
			prog.Rootfs = m.Rootfs.Parent.Path
		}
	}
	return prog
}

// CheckSpace validates a manifest and refuses, with a
// *backend.SpaceError, one whose volumes would not fit on this node's
// disk now (lifecycle.Manager.CheckSpace). The admin API asks before a
// deploy; every boot checks again.
func (ps *Programs) CheckSpace(id string, m *manifest.Program) error {
	if err := manifest.ValidateProgram(id, m); err != nil {
		return err
	}
	if err := ps.Manager.CheckSpace(programOf(id, m)); err != nil {
		return fmt.Errorf("programs.%s: %w", id, err)
	}
	return nil
}

// Delete stops a program and forgets it: its supervisor (if persistent)
// ends, and its VM, or the boot in progress and its VM, is stopped before
// Delete returns. Requests still holding the program cannot start it
// again.
func (ps *Programs) Delete(ctx context.Context, id string) error {
	ps.mu.Lock()
	route := ps.routes[id]
	delete(ps.routes, id)
	cancel, supervised := ps.cancel[id], ps.supervise[id]
	delete(ps.cancel, id)
	delete(ps.supervise, id)
	delete(ps.logs, id)
	if route != nil && ps.Changed != nil {
		ps.Changed(id, nil)
	}
	ps.mu.Unlock()
	if route == nil {
		return ErrNotFound
	}
	if cancel != nil {
		cancel()
	}
	err := ps.Manager.Remove(ctx, route.Program)
	if supervised != nil {
		select {
		case <-supervised:
		case <-ctx.Done():
			return errors.Join(err, fmt.Errorf("the supervisor of %s did not stop: %w", id, ctx.Err()))
		}
	}
	return err
}

// Output records a line of a program's output (lifecycle's OnOutput).
func (ps *Programs) Output(id string, l message.Log) {
	ps.mu.RLock()
	ring := ps.logs[id]
	ps.mu.RUnlock()
	if ring != nil {
		ring.Add(string(l.Source), int(l.Origin), int64(l.UnixNano), l.Line)
	}
}

// Logs returns the kept output lines of a program.
func (ps *Programs) Logs(id string) ([]logring.Entry, error) {
	ring, err := ps.LogRing(id)
	if err != nil {
		return nil, err
	}
	return ring.Since(0), nil
}

// LogRing returns the ring of a program's output, to read or follow: one
// per deployed program, kept across its VMs' restarts until it is
// deleted.
func (ps *Programs) LogRing(id string) (*logring.Ring, error) {
	ps.mu.RLock()
	ring := ps.logs[id]
	ps.mu.RUnlock()
	if ring == nil {
		return nil, ErrNotFound
	}
	return ring, nil
}

// firewallOf is what a program's environment admits.
func firewallOf(env manifest.Environment) firewall.VM {
	vm := firewall.VM{Internet: env.Internet}
	for _, p := range env.AllowedPorts {
		vm.AllowedPorts = append(vm.AllowedPorts, firewall.Port{Proto: p.Proto(), Port: uint16(p.Port)})
	}
	for _, f := range env.PortForwards {
		vm.Forwards = append(vm.Forwards, firewall.Forward{Proto: f.Proto(), HostPort: uint16(f.HostPort), VMPort: uint16(f.Port)})
	}
	return vm
}
