// Package sandbox is the backend that runs init as PID 1 of fresh Linux
// namespaces instead of a VM: the same contract, isolated the way a
// container runtime isolates (bubblewrap, nsjail, crun are the models).
//
// As root, each VM's guest root is an unprivileged host uid (a range of
// 65536 ids per VM from Backend.UIDBase) through a user namespace; its
// root filesystem is a read-only view of the host's / (or of
// Backend.RootDir), with fresh /proc and /sys, a minimal /dev, tmpfs on
// /tmp, /run and /root, an overlay over /etc whose writes stay in RAM, and
// the code read-only at /opt/code. Memory, CPU and process limits come
// from the program's resources through cgroups (v1 or v2). There is no
// network but loopback unless the program asks for a veth pair. The
// agent's environment is not passed on.
//
// The view is built by a stage: the agent's own binary re-executed in the
// sandbox's outer user, mount and PID namespaces (StageArg0, see
// RunStageIfRequested). It then starts init in inner namespaces nested in
// those, whose mounts the kernel locks, and stays as init's parent. All
// the mounts live in the sandbox's mount namespaces and vanish with them:
// an agent killed with SIGKILL leaves no mount behind.
//
// Without root it falls back to running init as a plain child process (it
// then mounts nothing and configures no network) and says so.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/cgroup"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Defaults of a Backend.
const (
	// DefaultStateDir is where agents before this design bound each
	// VM's code in the host's mount namespace (CleanStale clears what
	// dead ones left); the sandbox now keeps nothing on the host's disk.
	DefaultStateDir = "/var/lib/ferry/sandbox"
	// DefaultUIDBase is the first host uid (and gid) given to guests: VM
	// slot n maps its ids 0–65535 to DefaultUIDBase + n×65536 onwards,
	// far above the ids of the host's users.
	DefaultUIDBase = 1_000_000_000
	// DefaultMemoryMiB is a VM's memory limit when the program sets none
	// (the qemu backend's default VM size).
	DefaultMemoryMiB = 512
	// DefaultPids bounds a VM's processes and threads.
	DefaultPids = 1024
)

// idsPerVM is the size of each VM's uid and gid range: VM slot n (from
// the agent's hostnet.Pool; 64 agents of 256 slots at most) has the ids
// from UIDBase + n×idsPerVM, which stay below 2^31.
const idsPerVM = 65536

// Guest paths of the sandbox's own files.
const (
	guestCodeDir = contract.DefaultCodeDir
	guestInit    = "/run/ferry/init"
)

// Backend is the sandbox backend.
type Backend struct {
	// Root says whether namespaces are used; New sets it from the
	// effective uid.
	Root bool
	// StateDir is where older agents kept per-VM directories
	// (DefaultStateDir), cleared by CleanStale.
	StateDir string
	// VolumeDir holds the programs' persistent volumes (an ext4 image
	// per program and volume: VolumeDir/PROGRAM/NAME.ext4, the qemu
	// backend's format) and, for a moment, ephemeral ones; empty: no
	// persistent volumes.
	VolumeDir string
	// RootDir is the host directory the guest sees as its root,
	// read-only: "/" (the default) or an unpacked image.
	RootDir string
	// UIDBase is the first host id of the guests' ranges (DefaultUIDBase).
	UIDBase uint32
	// Pids bounds each VM's processes and threads (DefaultPids).
	Pids int64
	// Log receives the backend's warnings.
	Log *slog.Logger
	// Space reports the free space of the filesystem that holds the
	// volumes (backend.StatSpace when nil; tests fake it).
	Space backend.SpaceFunc

	seq atomic.Uint64
	// Slots hands out the VMs' slots, which name their uid ranges and
	// networks (NewPool(0) when nil: a lone agent).
	Slots *hostnet.Pool
	// Net links VMs that ask for a network (hostnet.New with the
	// defaults when nil).
	Net  *hostnet.Host
	once sync.Once
	// noUserNS is set once the kernel refused a user namespace: later
	// VMs run without one (and a warning said so).
	noUserNS atomic.Bool
	// ledger holds the space promised to the volumes of running VMs.
	ledger backend.SpaceLedger
}

// New returns the backend, in namespace mode when running as root.
func New(log *slog.Logger) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{Root: os.Geteuid() == 0, StateDir: DefaultStateDir, RootDir: "/", UIDBase: DefaultUIDBase, Pids: DefaultPids, Log: log}
	if !b.Root {
		log.Warn("not root: the sandbox backend runs init as a plain child process, without namespaces, mounts, limits or network")
	}
	return b
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return "sandbox" }

// CleanStale removes what sandboxes of dead agents left on this host:
// per-VM directories under StateDir with the code bind mounts that agents
// before this design made in the host's mount namespace, and the cgroups
// of agents that no longer run. An agent calls it before starting VMs;
// what belongs to a living agent (several may share a host) is left.
func (b *Backend) CleanStale() error {
	if !b.Root {
		return nil
	}
	var errs []error
	entries, err := os.ReadDir(b.StateDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		// Older agents' per-VM directories are PROGRAM-PID-INDEX.
		parts := strings.Split(e.Name(), "-")
		if !e.IsDir() || len(parts) < 3 || agentAlive(parts[len(parts)-2]) {
			continue
		}
		dir := filepath.Join(b.StateDir, e.Name())
		points, err := mountPointsUnder(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := len(points) - 1; i >= 0; i-- { // deepest first
			if err := unix.Unmount(points[i], unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("sandbox: unmounting stale %s: %w", points[i], err))
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("sandbox: removing stale %s: %w", dir, err))
			continue
		}
		b.Log.Info("sandbox: removed what a dead agent left", "path", dir, "mounts", len(points))
	}
	if b.VolumeDir != "" {
		// Ephemeral images live only while they are mounted; a crash in
		// between leaves one behind.
		old, _ := filepath.Glob(filepath.Join(b.VolumeDir, ephemeralPrefix+"*"))
		for _, dir := range old {
			if fi, err := os.Stat(dir); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
				if err := os.RemoveAll(dir); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if cgroup.Available() {
		err := cgroup.Sweep(func(name string) bool {
			pid, _, _ := strings.Cut(name, "-")
			return !agentAlive(pid)
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// vm is one sandbox.
type vm struct {
	cmd      *exec.Cmd
	conn     net.Conn
	channels *contract.Channels // the host's end of the channel socket
	done     chan struct{}
	err      error
	once     sync.Once
	network  *backend.Network
	guest    backend.Guest
}

// Start implements backend.Backend.
func (b *Backend) Start(ctx context.Context, spec backend.Spec) (backend.VM, error) {
	if spec.InitPath == "" {
		return nil, errors.New("sandbox: no init binary")
	}
	if spec.Instance || spec.RootSizeMiB > 0 {
		// An instance boots an image of its own, with sshd: the sandbox
		// shows the guest the host's root, read-only.
		return nil, errors.New("sandbox: this backend runs no instances (an image of its own, sshd, a persistent root); use the qemu backend")
	}
	if _, err := os.Stat(spec.InitPath); err != nil {
		return nil, fmt.Errorf("sandbox: init binary: %w", err)
	}
	single, err := spec.SingleFile()
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if !b.Root {
		switch {
		case len(spec.Volumes) > 0:
			return nil, fmt.Errorf("sandbox: volumes: %w", errNoRoot)
		case spec.Data != nil:
			return nil, fmt.Errorf("sandbox: data: %w", errNoRoot)
		case spec.CodeEncoding != "":
			return nil, fmt.Errorf("sandbox: %s code: %w", spec.CodeEncoding, errNoRoot)
		}
		return b.startPlain(spec, single)
	}
	claim, err := b.ledger.Claim(b.Space, b.volumeImages(spec))
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	return b.startIsolated(ctx, spec, single, claim)
}

// initArgs are init's arguments in the sandbox: its boot parameters, the
// transport and the channel socket being inherited descriptors.
func initArgs() []string {
	params := contract.BootParams{Transport: contract.Transport{Kind: contract.TransportFD, FD: initTransportFD}, Channels: initChannelsFD}
	return []string{"-cmdline", params.String()}
}

// startPlain runs init as an ordinary child process (not root). The code
// is used where it is; a single file, init copies into its own code
// directory.
func (b *Backend) startPlain(spec backend.Spec, single bool) (backend.VM, error) {
	hostEnd, guestEnd, err := socketPair()
	if err != nil {
		return nil, err
	}
	defer guestEnd.Close()
	channels, guestChannels, err := contract.ChannelPair()
	if err != nil {
		hostEnd.Close()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	defer guestChannels.Close()
	code := contract.Code{Encoding: contract.EncodingDirectory, Source: contract.Source{Path: spec.CodePath}}
	if single {
		code.Encoding = contract.EncodingPlainFile
	}
	cmd := exec.Command(spec.InitPath, initArgs()...)
	cmd.ExtraFiles = []*os.File{guestEnd, guestChannels}
	cmd.Dir = "/"
	cmd.Env = initEnv()
	out := console(spec)
	cmd.Stdout, cmd.Stderr = out, out
	v := &vm{cmd: cmd, done: make(chan struct{}), guest: backend.Guest{Code: code}, channels: channels}
	if err := backend.StartPinned(cmd, func(err error) { out.Flush(); v.err = out.Explain(err); channels.Close(); close(v.done) }); err != nil {
		hostEnd.Close()
		channels.Close()
		return nil, fmt.Errorf("sandbox: starting init: %w", err)
	}
	return v.connect(hostEnd)
}

// startIsolated runs the stage in new namespaces, puts it in its cgroup,
// sends it the plan with the mounts of the root filesystem, the code and
// init, waits for its report that init runs, and links the VM's network.
// The guest finds the code, a directory or a single file, in
// guestCodeDir. claim holds the space of the volumes it creates, until
// the stage exits.
func (b *Backend) startIsolated(ctx context.Context, spec backend.Spec, single bool, claim *backend.SpaceClaim) (backend.VM, error) {
	index := b.seq.Add(1)         // names this VM's cgroup
	slot, err := b.slots().Take() // its uid range and network
	if err != nil {
		claim.Release()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	cleanups := []func(){claim.Release}
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	cleanups = append(cleanups, func() { b.slots().Release(slot) })
	fail := func(err error) (backend.VM, error) {
		cleanup()
		return nil, fmt.Errorf("sandbox: %w", err)
	}

	limits := cgroup.Limits{MemoryBytes: int64(orDefault(spec.MemoryMiB, DefaultMemoryMiB)) << 20, CPUs: float64(spec.VCPUs), Pids: b.Pids}
	group, err := cgroup.New(cgroupName(spec.ProgramID, index), limits)
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, func() { deleteGroup(group, b.Log) })

	hostEnd, guestEnd, err := socketPair()
	if err != nil {
		return fail(err)
	}
	defer guestEnd.Close()
	ctrl, ctrlStage, err := controlPair()
	if err != nil {
		hostEnd.Close()
		return fail(err)
	}
	defer ctrl.Close()
	defer ctrlStage.Close()
	channels, guestChannels, err := contract.ChannelPair()
	if err != nil {
		hostEnd.Close()
		return fail(err)
	}
	defer guestChannels.Close()
	cleanups = append(cleanups, func() { channels.Close() })

	userNS := !b.noUserNS.Load()
	out := console(spec)
	v := &vm{done: make(chan struct{}), channels: channels,
		guest: backend.Guest{Code: contract.Code{Encoding: contract.EncodingDirectory, Source: contract.Source{Path: guestCodeDir}}}}
	exited := func(err error) {
		out.Flush()
		v.err = out.Explain(err)
		cleanup()
		close(v.done)
	}
	start := func(userNS bool) error {
		v.cmd = b.stageCommand(slot, userNS)
		v.cmd.ExtraFiles = []*os.File{guestEnd, ctrlStage, guestChannels}
		v.cmd.Stdout, v.cmd.Stderr = out, out
		return backend.StartPinned(v.cmd, exited)
	}
	err = start(userNS)
	if err != nil && userNS && userNSRefused(err) {
		b.noUserNS.Store(true)
		userNS = false
		b.Log.Warn("sandbox: the kernel refuses user namespaces; guests run as the host's root inside their namespaces (read-only root view, but no uid isolation)", "err", err)
		err = start(false)
	}
	if err != nil {
		hostEnd.Close()
		return fail(fmt.Errorf("starting the sandbox: %w", err))
	}
	ctrlStage.Close()
	// From here the stage runs; cleanup runs when it exits.
	abort := func(err error) (backend.VM, error) {
		v.Kill()
		hostEnd.Close()
		<-v.done
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	pid := v.cmd.Process.Pid
	if err := group.Add(pid); err != nil {
		return abort(err)
	}
	p := &plan{CodeAt: guestCodeDir, InitAt: guestInit, UserNS: userNS, Args: append([]string{"init"}, initArgs()...), Env: initEnv()}
	if single {
		p.CodeFile = spec.CodeFile
	}
	mounts, err := b.planMounts(ctx, spec, pid, userNS, p, &v.guest, claim)
	defer func() {
		for _, fd := range mounts {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	if err != nil {
		return abort(err)
	}
	if err := sendPlan(int(ctrl.Fd()), p, mounts); err != nil {
		return abort(err)
	}
	netns, err := waitReport(ctx, ctrl)
	if err != nil {
		return abort(err)
	}
	defer unix.Close(netns)
	if spec.Network {
		link, err := b.Net.Veth(uint64(slot), netlink.NsFd(netns), spec.Firewall)
		if err != nil {
			return abort(err)
		}
		v.network = link.Network
		go func() {
			<-v.done
			if err := link.Remove(); err != nil {
				b.Log.Warn("sandbox: removing a VM's network", "err", err)
			}
		}()
	}
	go watchOOM(v.done, group, spec, limits)
	return v.connect(hostEnd)
}

// stageCommand is the agent's own binary as the stage, in the sandbox's
// outer user, mount and PID namespaces; with userNS, in a user namespace
// whose ids 0–65535 are the slot's host ids.
func (b *Backend) stageCommand(slot int, userNS bool) *exec.Cmd {
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{StageArg0}, Dir: "/", Env: initEnv()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID}
	if userNS {
		uid := int(b.UIDBase) + slot*idsPerVM
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: idsPerVM}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: idsPerVM}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
	}
	return cmd
}

// waitReport waits for the stage's report, at most until ctx ends.
func waitReport(ctx context.Context, ctrl *os.File) (int, error) {
	type result struct {
		netns int
		err   error
	}
	got := make(chan result, 1)
	go func() {
		netns, err := receiveReport(int(ctrl.Fd()))
		got <- result{netns, err}
	}()
	select {
	case r := <-got:
		return r.netns, r.err
	case <-ctx.Done():
		unix.Shutdown(int(ctrl.Fd()), unix.SHUT_RDWR) // ends the receive
		if r := <-got; r.err == nil {
			unix.Close(r.netns)
		}
		return -1, fmt.Errorf("the stage did not report: %w", ctx.Err())
	}
}

// planMounts returns the descriptors that travel with the plan: detached
// mounts of the root filesystem, the code and init, then those of the
// data and volumes (p.Extra), setting p and the guest's view g for the
// code and data. The volumes it creates are tracked by claim.
func (b *Backend) planMounts(ctx context.Context, spec backend.Spec, pid int, userNS bool, p *plan, g *backend.Guest, claim *backend.SpaceClaim) ([]int, error) {
	mounts := make([]int, planMounts)
	for i := range mounts {
		mounts[i] = -1
	}
	var err error
	if mounts[mountRoot], err = detachedTree(b.RootDir, true); err != nil {
		return mounts, fmt.Errorf("root filesystem %s: %w", b.RootDir, err)
	}
	if mounts[mountCode], err = b.codeFD(spec, pid, userNS, p, g); err != nil {
		return mounts, fmt.Errorf("code %s: %w", spec.CodePath, err)
	}
	if mounts[mountInit], err = detachedTree(spec.InitPath, false); err != nil {
		return mounts, fmt.Errorf("init binary %s: %w", spec.InitPath, err)
	}
	extra, err := b.extras(ctx, spec, pid, userNS, p, g, claim)
	return append(mounts, extra...), err
}

// detachedTree returns a detached copy of the mount at path (with the
// mounts below it when recursive), for the stage to attach in its view.
func detachedTree(path string, recursive bool) (int, error) {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
	if recursive {
		flags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, flags)
	if err != nil {
		return -1, fmt.Errorf("open_tree: %w", err)
	}
	return fd, nil
}

// codeMount returns a detached, read-only copy of the mount tree at dir
// (a directory, or a single file).
// With a user namespace (the process pid's), the copy is id-mapped into it:
// files the host's root owns appear owned by the guest's root, so a code
// directory only root may read (0700, as made by most tools) is readable
// in the guest, and the guest can still not write it.
func codeMount(dir string, pid int, userNS bool) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return -1, fmt.Errorf("open_tree: %w", err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if userNS {
		userns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		defer unix.Close(userns)
		idmapped := *attr
		idmapped.Attr_set |= unix.MOUNT_ATTR_IDMAP
		idmapped.Userns_fd = uint64(userns)
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &idmapped); err == nil {
			return fd, nil
		}
		// The filesystem cannot be id-mapped: the guest sees the files
		// with the permissions "others" have.
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mount_setattr: %w", err)
	}
	return fd, nil
}
