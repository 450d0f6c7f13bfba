// Package qemu is the backend that boots each program in a real microVM:
// qemu-system-x86_64 -M microvm with the root image read-only (init makes
// it a tmpfs overlay), the program's code as a squashfs drive, its volumes
// as further drives, the host transport over virtio-serial and, when the
// program asks for the network, a tap device with the VM's addresses. KVM
// is used when /dev/kvm works, software emulation (TCG) otherwise.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Defaults.
const (
	DefaultStateDir  = "/var/lib/ferry/qemu" // code images, persistent volumes, transport sockets
	DefaultMemoryMiB = 512
	DefaultVCPUs     = 1
	// PortName is the virtio-serial port init listens on.
	PortName = "ferry"
)

// Drive serials, as init finds the drives (/sys/block/*/serial).
const (
	rootSerial  = "ferry-root"
	codeSerial  = "ferry-code"
	upperSerial = "ferry-upper" // a persistent root's writable layer
)

// Options configure the backend.
type Options struct {
	QEMU   string // the emulator (default qemu-system-x86_64 on PATH)
	Kernel string // vmlinuz
	Initrd string // initrd.img with init and its modules
	Rootfs string // root image (squashfs) with init as /sbin/init
	// StateDir keeps packed code images, persistent volumes (volumes/ID/)
	// and the disks that keep instances' roots (roots/ID.ext4).
	StateDir string
	// RunDir holds the per-VM transport sockets (default StateDir/run:
	// the agent's own, so that nothing of it is left outside its state
	// directory once it ends).
	RunDir string
	// Accel is "auto" (KVM when it works, else TCG), "kvm" or "tcg".
	Accel string
	// Transport is "auto" (vsock when the host has vhost-vsock, else
	// virtio-serial), "vsock" or "serial".
	Transport string
	// Slots hands out the VMs' indexes, which name their transports and
	// networks (hostnet.NewPool(0) when nil: a lone agent).
	Slots *hostnet.Pool
	// Net links VMs that ask for a network (hostnet.New with the
	// defaults when nil).
	Net *hostnet.Host
	Log *slog.Logger
	// Space reports the free space of the filesystem that holds the
	// volumes (backend.StatSpace when nil; tests fake it).
	Space backend.SpaceFunc
}

// Backend boots VMs with QEMU.
type Backend struct {
	opt       Options
	kvm       bool
	tscKHz    int
	transport string // TransportVsock or TransportSerial
	// ledger holds the space promised to the disks of running VMs.
	ledger backend.SpaceLedger
}

// New checks the emulator, kernel, initrd and image, and picks the
// accelerator.
func New(opt Options) (*Backend, error) {
	if opt.QEMU == "" {
		opt.QEMU = "qemu-system-x86_64"
	}
	if opt.Slots == nil {
		opt.Slots = hostnet.NewPool(0)
	}

	path, err := exec.LookPath(opt.QEMU)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w (apt-get install qemu-system-x86)", err)
	}
	opt.QEMU = path
	for what, p := range map[string]string{"kernel": opt.Kernel, "initrd": opt.Initrd, "root image": opt.Rootfs} {
		if err := checkFile(what, p); err != nil {
			return nil, fmt.Errorf("qemu: %w (make rootfs builds them)", err)
		}
	}
	if opt.StateDir == "" {
		opt.StateDir = DefaultStateDir
	}
	// Ephemeral volumes live as long as their VM: what is there now was
	// left by an agent that ended without removing it.
	if err := os.RemoveAll(filepath.Join(opt.StateDir, "ephemeral")); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if opt.RunDir == "" {
		opt.RunDir = filepath.Join(opt.StateDir, "run")
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Net == nil {
		opt.Net = hostnet.New(hostnet.Options{Log: opt.Log})
	}
	b := &Backend{opt: opt}
	switch opt.Accel {
	case "", "auto":
		if err := usableKVM(opt.QEMU, opt.Kernel, opt.StateDir, opt.Log); err != nil {
			opt.Log.Info("qemu: KVM is not usable; using software emulation (TCG), which is slow", "reason", err)
		} else {
			b.kvm = true
		}
	case "kvm":
		if err := usableKVM(opt.QEMU, opt.Kernel, opt.StateDir, opt.Log); err != nil {
			return nil, fmt.Errorf("qemu: KVM was asked for: %w", err)
		}
		b.kvm = true
	case "tcg":
	default:
		return nil, fmt.Errorf("qemu: accelerator %q is not auto, kvm or tcg", opt.Accel)
	}
	switch opt.Transport {
	case "", TransportAuto:
		b.transport = TransportVsock
		if err := vhostVsockUsable(); err != nil {
			b.transport = TransportSerial
			opt.Log.Debug("qemu: no vhost-vsock; using virtio-serial", "reason", err)
		}
	case TransportVsock:
		if err := vhostVsockUsable(); err != nil {
			return nil, fmt.Errorf("qemu: vsock was asked for: %w", err)
		}
		b.transport = TransportVsock
	case TransportSerial:
		b.transport = TransportSerial
	default:
		return nil, fmt.Errorf("qemu: transport %q is not auto, vsock or serial", opt.Transport)
	}
	if !b.kvm {
		if b.tscKHz, err = hostTSCkHz(); err != nil {
			opt.Log.Warn("qemu: cannot read the CPU clock; guests calibrate their TSC themselves", "err", err)
		}
	}
	return b, nil
}

// usableKVM checks /dev/kvm, then the emulator with it, then a boot of
// the kernel with both. The last two take a second where KVM works and
// kernelProbeWait where it hangs guests: their verdict is kept in the
// state directory (kvmVerdictFile) and taken from there while the host,
// /dev/kvm, the emulator and the kernel stay the same (kvmProbeKey).
func usableKVM(qemu, kernel, stateDir string, log *slog.Logger) error {
	if err := ProbeKVM(); err != nil {
		return err
	}
	key, err := kvmProbeKey(qemu, kernel)
	if err != nil {
		log.Debug("qemu: the KVM probe's verdict is not kept", "reason", err)
	}
	file := filepath.Join(stateDir, kvmVerdictFile)
	v, cached := cachedKVMProbe(file, key, func() error {
		if err := probeQEMUKVM(context.Background(), qemu); err != nil {
			return err
		}
		return probeKernelKVM(context.Background(), qemu, kernel, kernelProbeWait)
	})
	if !cached {
		return v.err()
	}
	log.Debug("qemu: the KVM probe's verdict was found for this host, emulator and kernel", "usable", v.Usable, "file", file)
	if err := v.err(); err != nil {
		return fmt.Errorf("%w (found by an earlier probe and kept in %s: remove the file to probe again)", err, file)
	}
	return nil
}

func checkFile(what, path string) error {
	if path == "" {
		return fmt.Errorf("no %s given", what)
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s %s is not a regular file", what, path)
	}
	return nil
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return "qemu" }

// Accelerator says what VMs run on: "kvm" or "tcg".
func (b *Backend) Accelerator() string {
	if b.kvm {
		return "kvm"
	}
	return "tcg"
}

// drive is one virtio-blk drive.
type drive struct {
	file, serial string
	readOnly     bool
}

// Start implements backend.Backend: it prepares the drives and the
// network, starts QEMU and waits for it to connect the transport socket.
func (b *Backend) Start(ctx context.Context, spec backend.Spec) (backend.VM, error) {
	kernel, rootfs := b.opt.Kernel, b.opt.Rootfs
	if spec.Kernel != "" {
		kernel = spec.Kernel
	}
	if spec.Rootfs != "" {
		rootfs = spec.Rootfs
	}
	if err := checkFile("kernel", kernel); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if err := checkFile("root image", rootfs); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	log := spec.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	claim, err := b.ledger.Claim(b.opt.Space, b.images(spec))
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	v := &vm{done: make(chan struct{}), log: log, console: &backend.Console{Log: log, Forward: spec.Console}, claim: claim}
	drives, boot, err := b.root(ctx, spec, rootfs, v.log, claim)
	if err != nil {
		claim.Release()
		return nil, fmt.Errorf("qemu: %w", err)
	}

	more, release, err := b.storage(ctx, spec, v, claim)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	drives = append(drives, more...)

	slot, err := b.opt.Slots.Take()
	if err != nil {
		release()
		return nil, fmt.Errorf("qemu: %w", err)
	}
	index := uint64(slot)
	var tr transport = &vsockTransport{cid: vsockCID(index)}
	if b.transport == TransportSerial {
		st, err := newSerialTransport(b.opt.RunDir, index)
		if err != nil {
			b.opt.Slots.Release(slot)
			release()
			return nil, fmt.Errorf("qemu: %w", err)
		}
		tr = st
	}
	cleanups := []func(){release, func() { b.opt.Slots.Release(slot) }, tr.close}
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}

	var extra []*os.File
	if spec.Network {
		link, tap, err := b.opt.Net.Tap(index, spec.Firewall)
		if err != nil {
			cleanup()
			return nil, fmt.Errorf("qemu: %w", err)
		}
		cleanups = append(cleanups, func() {
			tap.Close()
			if err := link.Remove(); err != nil {
				v.log.Warn("qemu: removing the VM's network", "err", err)
			}
		})
		extra = append(extra, tap)
		v.network = link.Network
	}

	args := b.args(spec, index, kernel, boot, drives, tr, len(extra) > 0)
	v.log.Debug("starting qemu", "args", strings.Join(args, " "))
	cmd := exec.Command(b.opt.QEMU, args...)
	cmd.ExtraFiles = extra
	v.cmd = cmd
	if err := startWithConsole(cmd, v); err != nil {
		cleanup()
		return nil, fmt.Errorf("qemu: %w", err)
	}
	go func() {
		<-v.done
		cleanup()
	}()

	conn, err := tr.connect(ctx, v.done)
	switch {
	case errors.Is(err, errVMEnded):
		return nil, fmt.Errorf("qemu: %w", v.Err())
	case err != nil:
		v.Kill()
		return nil, fmt.Errorf("qemu: connecting to init: %w", err)
	}
	v.setConn(conn)
	v.log.Info("VM started", "vm", v.Describe(), "accel", b.Accelerator(), "transport", b.transport, "vcpus", vcpus(spec), "memory_mib", memory(spec))
	return v, nil
}

// root returns the drives of the VM's root and init's parameters for
// them: the image, read-only, made a writable overlay by init, whose
// writable layer is on a disk of the program's when spec.RootSizeMiB asks
// for a persistent root (created empty at first use, kept after; then
// tracked by claim).
func (b *Backend) root(ctx context.Context, spec backend.Spec, rootfs string, log *slog.Logger, claim *backend.SpaceClaim) ([]drive, contract.BootParams, error) {
	drives := []drive{{file: rootfs, serial: rootSerial, readOnly: true}}
	boot := contract.BootParams{Root: "serial:" + rootSerial, RootFS: "squashfs", Overlay: true, OnExit: contract.ActionReboot}
	if rootfs != b.opt.Rootfs {
		boot.RootFS = "" // the program's own image: squashfs or ext4, init tries each
	}
	if spec.RootSizeMiB > 0 {
		image, created, err := persistentVolume(ctx, b.rootsDir(), spec.ProgramID, spec.RootSizeMiB)
		if err != nil {
			return nil, boot, fmt.Errorf("the persistent root: %w", err)
		}
		if created {
			log.Info("created the disk that keeps the root", "image", image, "size_mib", spec.RootSizeMiB)
		}
		track(claim, image, log)
		drives = append(drives, drive{file: image, serial: upperSerial})
		boot.Upper = "serial:" + upperSerial
	}
	return drives, boot, nil
}

func vcpus(spec backend.Spec) int {
	if spec.VCPUs > 0 {
		return spec.VCPUs
	}
	return DefaultVCPUs
}

func memory(spec backend.Spec) int {
	if spec.MemoryMiB > 0 {
		return spec.MemoryMiB
	}
	return DefaultMemoryMiB
}

// KernelCmdline is the command line VMs boot with: the console on the
// first serial port, a reboot (Firecracker's way to end; QEMU runs with
// -no-reboot) on panic or when init is done, init's parameters (root
// image, overlay, transport: Start sets them), and under TCG the host's
// TSC frequency.
func (b *Backend) KernelCmdline(params contract.BootParams) string {
	words := []string{"console=ttyS0", "quiet", "reboot=t", "panic=-1", "pci=off", params.String()}
	if !b.kvm && b.tscKHz > 0 {
		words = append(words, fmt.Sprintf("tsc_early_khz=%d", b.tscKHz), "tsc=reliable")
	}
	return strings.Join(words, " ")
}

// args are QEMU's arguments; boot gets tr's transport.
func (b *Backend) args(spec backend.Spec, index uint64, kernel string, boot contract.BootParams, drives []drive, tr transport, network bool) []string {
	boot.Transport = tr.guestTransport()
	accel, cpu := "tcg", "max"
	if b.kvm {
		accel, cpu = "kvm", "host"
	}
	args := []string{
		"-M", "microvm", "-accel", accel, "-cpu", cpu,
		"-smp", fmt.Sprint(vcpus(spec)), "-m", fmt.Sprint(memory(spec)),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", b.opt.Initrd, "-append", b.KernelCmdline(boot),
		"-serial", "stdio",
	}
	for i, d := range drives {
		id := fmt.Sprintf("drive%d", i)
		opts := fmt.Sprintf("id=%s,file=%s,format=raw,if=none,cache=none,aio=threads", id, escapeOpt(d.file))
		if d.readOnly {
			opts += ",read-only=on"
		}
		args = append(args, "-drive", opts, "-device", fmt.Sprintf("virtio-blk-device,drive=%s,serial=%s", id, d.serial))
	}
	args = append(args, tr.qemuArgs()...)
	if network {
		mac := fmt.Sprintf("52:54:00:%02x:%02x:%02x", byte(index>>16), byte(index>>8), byte(index))
		args = append(args, "-netdev", "tap,id=net0,fd=3", "-device", "virtio-net-device,netdev=net0,mac="+mac)
	}
	return args
}

// escapeOpt doubles commas, QEMU's option separator.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// startWithConsole starts QEMU with its stdout and stderr (the guest's
// serial console, and QEMU's own messages) going line by line to v's
// console.
func startWithConsole(cmd *exec.Cmd, v *vm) error {
	cmd.Stdout, cmd.Stderr = v.console, v.console
	return backend.StartPinned(cmd, func(err error) {
		v.console.Flush()
		v.exited(err)
	})
}

// vm is one running QEMU.
type vm struct {
	cmd     *exec.Cmd
	conn    net.Conn
	guest   backend.Guest
	network *backend.Network
	log     *slog.Logger
	console *backend.Console

	// claim holds the space of its disks: given back as QEMU exits,
	// before Done, so that the next boot of its program finds it free.
	claim *backend.SpaceClaim

	mu   sync.Mutex
	err  error
	done chan struct{}
	kill sync.Once
}

func (v *vm) exited(err error) {
	v.mu.Lock()
	v.err = &ExitError{Err: err, Console: v.console.Tail()}
	conn := v.conn
	v.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	v.claim.Release()
	close(v.done)
}

func (v *vm) setConn(c net.Conn) {
	v.mu.Lock()
	v.conn = c
	v.mu.Unlock()
}

// errVMEnded says the VM ended while the transport was being connected.
var errVMEnded = errors.New("the VM ended")

// ExitError is how a VM ended: QEMU's exit status and the last lines of
// its console, which say why when it ended early.
type ExitError struct {
	Err     error // nil when QEMU exited 0 (the guest rebooted or powered off)
	Console []string
}

func (e *ExitError) Error() string {
	status := "the VM stopped"
	if e.Err != nil {
		status = "qemu exited: " + e.Err.Error()
	}
	if len(e.Console) == 0 {
		return status + " (no console output)"
	}
	return status + "; last console lines:\n  " + strings.Join(e.Console, "\n  ")
}

func (v *vm) Conn() io.ReadWriteCloser {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.conn
}
func (v *vm) Guest() backend.Guest      { return v.guest }
func (v *vm) Network() *backend.Network { return v.network }
func (v *vm) Done() <-chan struct{}     { return v.done }

func (v *vm) Err() error {
	select {
	case <-v.done:
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.err
	default:
		return nil
	}
}

func (v *vm) Kill() {
	v.kill.Do(func() {
		if v.cmd != nil && v.cmd.Process != nil {
			v.cmd.Process.Kill()
		}
	})
}

func (v *vm) Describe() string {
	if v.cmd == nil || v.cmd.Process == nil {
		return "qemu"
	}
	return fmt.Sprintf("qemu pid %d", v.cmd.Process.Pid)
}
