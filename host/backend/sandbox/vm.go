package sandbox

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/cgroup"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// connect makes the host end of the session socket the VM's connection.
func (v *vm) connect(hostEnd *os.File) (backend.VM, error) {
	conn, err := net.FileConn(hostEnd)
	hostEnd.Close()
	if err != nil {
		v.Kill()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	v.conn = conn
	return v, nil
}

func (v *vm) Conn() io.ReadWriteCloser { return v.conn }

// WorkerChannels implements backend.ChannelVM.
func (v *vm) WorkerChannels() *contract.Channels { return v.channels }
func (v *vm) Guest() backend.Guest               { return v.guest }
func (v *vm) Network() *backend.Network          { return v.network }
func (v *vm) Done() <-chan struct{}              { return v.done }
func (v *vm) Err() error {
	select {
	case <-v.done:
		return v.err
	default:
		return nil
	}
}
func (v *vm) Kill() {
	v.once.Do(func() {
		if v.cmd.Process != nil {
			v.cmd.Process.Kill()
		}
	})
}
func (v *vm) Describe() string {
	if v.cmd.Process == nil {
		return "sandbox"
	}
	return fmt.Sprintf("sandbox pid %d", v.cmd.Process.Pid)
}

// socketPair returns the two ends of the session's stream socket.
func socketPair() (hostEnd, guestEnd *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "guest"), nil
}

// controlPair returns the two ends of the stage's control socket (one
// message: the plan with the code's mount).
func controlPair() (hostEnd, stageEnd *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: control socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "stage-control"), nil
}

// initEnv is the environment of the stage and init: the agent's own
// environment (which may hold secrets such as the admin token) is not
// passed on, only a PATH and init's documented runtime settings.
func initEnv() []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, k := range []string{"GOGC", "GOMAXPROCS", "GOMEMLIMIT"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// console is where the VM's console lines go: the backend's debug log and
// the program's logs.
func console(spec backend.Spec) *backend.Console {
	return &backend.Console{Log: spec.Log, Forward: spec.Console}
}

// slots is the backend's pool of VM slots.
func (b *Backend) slots() *hostnet.Pool {
	b.once.Do(func() {
		if b.Slots == nil {
			b.Slots = hostnet.NewPool(0)
		}
		if b.Net == nil {
			b.Net = hostnet.New(hostnet.Options{Log: b.Log})
		}
	})
	return b.Slots
}

// orDefault returns v, or def when v is not positive.
func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// cgroupName names a VM's cgroup after the agent's pid (so that a later
// agent can tell a dead agent's groups from a living one's), the program
// and the VM's index.
func cgroupName(programID string, index uint64) string {
	return fmt.Sprintf("%d-%s-%d", os.Getpid(), safeName(programID), index)
}

// agentAlive reports whether the agent whose pid is pidText still runs.
// Text that is not a pid counts as alive: it is not ours to remove. Our
// own pid counts as dead: CleanStale runs before this agent makes anything,
// so what carries our pid was left by an earlier process that had it.
func agentAlive(pidText string) bool {
	pid, err := strconv.Atoi(pidText)
	switch {
	case err != nil || pid <= 0:
		return true
	case pid == os.Getpid():
		return false
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// deleteGroup removes a VM's cgroup once its processes are gone (the
// kernel may take a moment to empty it after the VM's init died).
func deleteGroup(g *cgroup.Group, log *slog.Logger) {
	var err error
	for range 50 {
		if err = g.Delete(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log.Warn("sandbox: cannot remove the VM's cgroup", "cgroup", g.Name(), "err", err)
}

// oomPoll is how often a VM's cgroup is checked for OOM kills.
const oomPoll = 500 * time.Millisecond

// watchOOM reports, until done, each time the kernel kills a process of
// the VM for exceeding its memory limit: in the agent's log and in the
// program's console lines (its logs).
func watchOOM(done <-chan struct{}, g *cgroup.Group, spec backend.Spec, limits cgroup.Limits) {
	tick := time.NewTicker(oomPoll)
	defer tick.Stop()
	var seen uint64
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		kills, err := g.OOMKills()
		if err != nil || kills <= seen {
			continue
		}
		msg := fmt.Sprintf("out of memory: the kernel killed %d process(es) of this program for exceeding its memory limit of %d MiB (%d so far)", kills-seen, limits.MemoryBytes>>20, kills)
		seen = kills
		if spec.Log != nil {
			spec.Log.Warn("sandbox: " + msg)
		}
		if spec.Console != nil {
			spec.Console("ferry: " + msg)
		}
	}
}

// mountPointsUnder lists the mount points at or below dir in the agent's
// mount namespace, outermost first.
func mountPointsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil, err
	}
	points := make([]string, 0, len(mounts))
	for _, m := range mounts {
		points = append(points, m.Mountpoint)
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) < len(points[j]) })
	return points, nil
}

// safeName keeps letters, digits, '-' and '_' of a program id for a name.
func safeName(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || len(b) > 64 {
		return "program"
	}
	return string(b)
}
