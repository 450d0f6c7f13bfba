// Package initsys is init's boot policy as a short list of stages, which
// cmd/init calls in order (README "Running init"):
//
//  1. Load: the boot parameters (kernel command line, or -cmdline), the
//     log;
//  2. from an initramfs with ferry.root set, SwitchRoot: early mounts,
//     modules, and the hand-over to the root image's init;
//  3. Run: as PID 1 the system mounts, the kernel modules and the overlay
//     root; then the reaper, where setup writes, the service with its app
//     runners, the host transport, and, once shutdown is asked for, the
//     orderly stop;
//  4. as PID 1, PowerOff, which never returns.
//
// Run by hand (not PID 1) init mounts nothing, writes under a scratch
// directory and never powers off.
package initsys

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// gcPercent is init's default GOGC. init's live heap is small (buffers
// for the streams in flight), so collecting at +25% instead of Go's +100%
// keeps its resident memory low for little CPU.
const gcPercent = 25

// TuneRuntime sets init's defaults for the Go runtime; GOGC and GOMAXPROCS
// in the environment win. init is a relay: its work is short and wakes
// often, and the CPUs are the app's. With one P per two CPUs, fewer threads
// are woken per request and fewer CPUs are taken from the app's workers
// (measured in the sandbox on 2 cores: FastAPI with 2 workers 6,960 ->
// 7,900 req/s, hello world +5%).
func TuneRuntime() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(maxProcs(runtime.NumCPU()))
	}
}

// maxProcs is init's GOMAXPROCS on a machine of ncpu CPUs.
func maxProcs(ncpu int) int { return max(1, ncpu/2) }

// Options are what init's command line says.
type Options struct {
	// PID1 is true when init owns the machine (or its namespaces).
	PID1 bool
	// Cmdline, if set, is read for ferry.* parameters instead of
	// /proc/cmdline (which only PID 1 reads).
	Cmdline string
	// Transport, if set, overrides ferry.transport.
	Transport string
	// Debug turns on debug logs, like ferry.debug=1.
	Debug bool
	// Agent is init's name and version, told to the host.
	Agent string
	// HostUDS, if set, stands for the VM's vsock device toward the host,
	// as Firecracker's uds_path: connections to host port P go to the
	// unix socket HostUDS_P. It turns on the reference runtime's mode.
	HostUDS string
	// AlephShell enables the reference protocol's shell commands.
	AlephShell bool
	// Stderr receives the logs; os.Stderr if nil.
	Stderr io.Writer
}

// Init is one run of init: what it was told and what it has done so far.
type Init struct {
	// PID1 is true when init owns the machine.
	PID1 bool
	// Cmdline is the kernel command line (or -cmdline).
	Cmdline string
	// Params are the ferry.* parameters, defaults where they are missing
	// or bad.
	Params contract.BootParams
	// Log is init's logger.
	Log *slog.Logger
	// Timeline records when each boot phase ended.
	Timeline *boot.Timeline
	// Agent is init's name and version.
	Agent string
	// Aleph is the reference runtime's mode (docs/aleph-compat.md): PID
	// 1 without ferry.* parameters, or a -host-uds. init signals the
	// supervisor it is ready, bridges the guest API and prints the
	// program's output on its console.
	Aleph bool
	// HostUDS and AlephShell are Options'.
	HostUDS    string
	AlephShell bool

	// upper is the disk under a persistent root (ferry.upper), sealed at
	// the end.
	upper *boot.Upper
}

// Load reads the boot parameters: the kernel command line as PID 1
// (mounting /proc first when started from an initramfs, where nothing is
// mounted yet) or opt.Cmdline, then -transport over ferry.transport. Bad
// parameters are logged and their defaults kept; so is a bad -transport
// as PID 1, which never stops booting, while by hand it is an error. tl
// is the timeline, with the kernel's mark.
func Load(opt Options, tl *boot.Timeline) (*Init, error) {
	cmdline := opt.Cmdline
	if cmdline == "" && opt.PID1 {
		cmdline = readKernelCmdline()
	}
	params, paramErrs := contract.ParseBootParams(cmdline)
	reference := opt.PID1 && !hasFerryParams(cmdline)
	if reference {
		referenceDefaults(&params)
	}
	var flagErr error
	if opt.Transport != "" {
		t, err := contract.ParseTransport(opt.Transport)
		if err != nil {
			flagErr = fmt.Errorf("-transport: %w", err)
		} else {
			params.Transport = t
		}
	}
	if flagErr != nil && !opt.PID1 {
		return nil, flagErr
	}
	stderr := opt.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	level := slog.LevelInfo
	if params.Debug || opt.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("component", "init")
	if flagErr != nil {
		log.Warn("ignoring a bad flag", "err", flagErr)
	}
	for _, err := range paramErrs {
		log.Warn("ignoring kernel parameter", "err", err)
	}
	if reference {
		log.Info("no ferry.* kernel parameters: booting as the reference runtime's init", "transport", params.Transport.String())
	}
	return &Init{PID1: opt.PID1, Cmdline: cmdline, Params: params, Log: log, Timeline: tl, Agent: opt.Agent,
		Aleph: reference || opt.HostUDS != "", HostUDS: opt.HostUDS, AlephShell: opt.AlephShell}, nil
}

// readKernelCmdline returns /proc/cmdline, mounting /proc if an
// initramfs started init with nothing mounted.
func readKernelCmdline() string {
	if _, err := os.Stat("/proc/cmdline"); err != nil {
		os.MkdirAll("/proc", 0o555)
		unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return ""
	}
	return string(b)
}

// PowerOff ends PID 1: it powers off, or reboots with
// ferry.shutdown=reboot, and should that fail, halts here. It never
// returns: PID 1 exiting would panic the kernel.
func (in *Init) PowerOff() {
	reboot := in.Params.OnExit == contract.ActionReboot
	in.Log.Info("powering off", "reboot", reboot)
	if err := boot.PowerOff(reboot); err != nil {
		in.Log.Error("power off failed; halting here", "err", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}
