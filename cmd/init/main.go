// Command init is Ferry's PID 1 inside a microVM. It mounts the system,
// loads the kernel modules it needs, listens on the transport named on the
// kernel command line, takes its configuration from the host, starts the
// user's program and serves requests; on SIGTERM or a GOAWAY from the host
// it stops the program, unmounts and powers off.
//
// Run by hand (not as PID 1) it mounts nothing and never powers off, so the
// app path can be exercised anywhere:
//
//	init -transport unix:/tmp/ferry.sock
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/app/asgi"
	"github.com/ferry-vm/ferry/guest/app/executable"
	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/bootparam"
	"github.com/ferry-vm/ferry/guest/config"
	"github.com/ferry-vm/ferry/guest/kmod"
	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/guest/service"
	"github.com/ferry-vm/ferry/guest/setup"
	"github.com/ferry-vm/ferry/guest/transport"
	"github.com/ferry-vm/ferry/protocol/message"
)

const agent = "ferry-init/0.1"

// gcPercent is init's default GOGC. init's live heap is small (buffers
// for the streams in flight), so collecting at +25% instead of Go's +100%
// keeps its resident memory low for little CPU.
const gcPercent = 25

// tuneRuntime sets init's defaults for the Go runtime; GOGC and GOMAXPROCS
// in the environment win. init is a relay: its work is short and wakes
// often, and the CPUs are the app's. With one P per two CPUs, fewer threads
// are woken per request and fewer CPUs are taken from the app's workers
// (measured in the sandbox on 2 cores: FastAPI with 2 workers 6,960 ->
// 7,900 req/s, hello world +5%).
func tuneRuntime() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(max(1, runtime.NumCPU()/2))
	}
}

func main() {
	pid1 := os.Getpid() == 1
	var tl boot.Timeline
	tl.Mark("kernel")

	tuneRuntime()

	version := flag.Bool("version", false, "print the version and exit")
	transportFlag := flag.String("transport", "", "vsock:PORT, serial:NAME, fd:N or unix:PATH (default: ferry.transport from the kernel command line)")
	cmdlineFlag := flag.String("cmdline", "", "read ferry.* parameters from this string instead of /proc/cmdline")
	debugFlag := flag.Bool("debug", false, "debug logs")
	flag.Parse()
	if *version {
		fmt.Printf("%s (protocol version %d)\n", agent, message.ProtocolVersion)
		return
	}

	cmdline := *cmdlineFlag
	if cmdline == "" && pid1 {
		if _, err := os.Stat("/proc/cmdline"); err != nil {
			// Started from an initramfs: nothing is mounted yet.
			os.MkdirAll("/proc", 0o555)
			unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}
		if b, err := os.ReadFile("/proc/cmdline"); err == nil {
			cmdline = string(b)
		}
	}
	params, paramErrs := bootparam.Parse(cmdline)
	if *transportFlag != "" {
		t, err := bootparam.ParseTransport(*transportFlag)
		if err != nil {
			fmt.Fprintf(os.Stderr, "init: -transport: %v\n", err)
			if !pid1 {
				os.Exit(2)
			}
		} else {
			params.Transport = t
		}
	}
	level := slog.LevelInfo
	if params.Debug || *debugFlag {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", "init")
	for _, err := range paramErrs {
		log.Warn("ignoring kernel parameter", "err", err)
	}

	if pid1 && params.Root != "" && boot.InInitramfs() {
		// The initramfs stage: it returns only if the root image is unusable.
		err := initramfsStage(log, params, cmdline, &tl)
		log.Error("cannot start the root image; powering off", "root", params.Root, "err", err)
		if err := boot.PowerOff(params.OnExit == bootparam.ActionReboot); err != nil {
			log.Error("power off failed; halting here", "err", err)
		}
		for {
			time.Sleep(time.Hour)
		}
	}
	if earlier, err := boot.DecodeTimeline(os.Getenv(boot.TimelineEnv)); err == nil && len(earlier) > 0 {
		// Handed over from the initramfs: this process started at the
		// switch, not at the kernel's start.
		tl = boot.Timeline{}
		tl.Prepend(earlier)
		tl.Mark("switch")
	}
	os.Unsetenv(boot.TimelineEnv)

	code := run(log, params, cmdline, pid1, &tl)
	if !pid1 {
		os.Exit(code)
	}
	// PID 1 never exits: exiting would panic the kernel.
	log.Info("powering off", "reboot", params.OnExit == bootparam.ActionReboot)
	if err := boot.PowerOff(params.OnExit == bootparam.ActionReboot); err != nil {
		log.Error("power off failed; halting here", "err", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}

// run boots, serves and shuts down; it returns an exit code for dev mode.
func run(log *slog.Logger, params bootparam.Params, cmdline string, pid1 bool, tl *boot.Timeline) (code int) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("init panicked; shutting down cleanly", "panic", r, "stack", string(debug.Stack()))
			code = 70
		}
	}()
	if pid1 {
		mounted, err := boot.MountSystem()
		if err != nil {
			log.Warn("some system mounts failed", "err", err)
		}
		log.Debug("mounted", "targets", strings.Join(mounted, " "))
		tl.Mark("mounts")
		if loadModules(log, cmdline, params.Transport) {
			tl.Mark("modules")
		}
		if params.Overlay {
			if err := boot.OverlayRoot(); err != nil {
				log.Error("root stays as it is", "err", err)
			} else {
				if _, err := boot.MountSystem(); err != nil {
					log.Warn("some system mounts failed on the overlay root", "err", err)
				}
				log.Info("root is a writable overlay on tmpfs")
			}
			tl.Mark("overlay")
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := reaper.New(log)
	if err != nil {
		log.Error("cannot start the reaper", "err", err)
		return 1
	}
	go r.Run(ctx)

	setupOpt := setup.Options{Paths: setup.DefaultPaths, System: pid1}
	if !pid1 {
		// By hand: files go under a scratch directory, not the real /etc.
		dir, err := os.MkdirTemp("", "ferry-init-")
		if err != nil {
			log.Error("cannot create a scratch directory", "err", err)
			return 1
		}
		setupOpt.Paths = setup.Paths{Root: dir, Code: filepath.Join(dir, "code"), Data: filepath.Join(dir, "data"), DevRoot: "/dev", SysBlock: "/sys/block"}
	}
	svc := service.New(service.Options{
		Log:      log,
		Timeline: tl,
		Setup:    setupOpt,
		Agent:    agent,
		Apps: map[string]app.Factory{
			config.InterfaceExecutable: executable.NewFactory(r, log),
			config.InterfaceASGI:       asgi.NewFactory(r, log),
		},
	})

	l, err := transport.Listen(params.Transport)
	if err != nil {
		log.Error("cannot open the host transport", "transport", params.Transport.String(), "err", err)
		if !pid1 {
			return 1
		}
	} else {
		log.Info("listening for the host", "transport", l.String(), "pid1", pid1)
		tl.Mark("transport")
		go func() {
			defer func() {
				if r := recover(); r != nil {
					log.Error("service panicked", "panic", r, "stack", string(debug.Stack()))
					svc.TellHost(fmt.Sprintf("init: internal error, shutting down: %v", r))
					svc.RequestShutdown("internal error")
				}
			}()
			if err := svc.Serve(ctx, l); err != nil && ctx.Err() == nil {
				log.Warn("transport closed", "err", err)
			}
		}()
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-sigs:
		log.Info("shutting down", "reason", sig.String())
	case reason := <-svc.ShutdownRequested():
		log.Info("shutting down", "reason", reason)
	}
	if err := svc.Stop(params.Grace); err != nil {
		log.Warn("stopping the program", "err", err)
	}
	if l != nil {
		l.Close()
	}
	if pid1 {
		stopEverything(log, params.Grace)
	}
	cancel()
	unix.Sync()
	log.Info("stopped")
	return 0
}

// stopEverything sends SIGTERM to every remaining process, waits briefly,
// then SIGKILL.
func stopEverything(log *slog.Logger, grace time.Duration) {
	if err := reaper.KillAll(syscall.SIGTERM); err == nil {
		time.Sleep(min(grace, 500*time.Millisecond))
		_ = reaper.KillAll(syscall.SIGKILL)
	} else if err != syscall.ESRCH {
		log.Debug("signalling remaining processes", "err", err)
	}
}

// initramfsStage runs when init is the initramfs's /init and
// ferry.root names the root image: it mounts the early filesystems, loads
// the modules (from the initramfs) that reach the root image, the network
// and the host, then hands over to the image's /sbin/init. It returns only
// on failure.
func initramfsStage(log *slog.Logger, params bootparam.Params, cmdline string, tl *boot.Timeline) error {
	if err := boot.MountEarly(); err != nil {
		return err
	}
	tl.Mark("initramfs")
	if !loadModules(log, cmdline, params.Transport) {
		log.Warn("the initramfs has no kernel modules; relying on built-in drivers")
	}
	tl.Mark("modules")
	log.Info("switching to the root image", "root", params.Root)
	return boot.SwitchRoot(context.Background(), boot.RootOptions{Device: params.Root, FS: params.RootFS, Wait: 20 * time.Second}, tl)
}

// loadModules loads what the transport and the usual devices need, when
// the kernel has them as modules, with the parameters the kernel command
// line gives them. Built-in or absent modules are fine. It reports whether
// there was a module index to load from.
func loadModules(log *slog.Logger, cmdline string, t bootparam.Transport) bool {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return false
	}
	release := unix.ByteSliceToString(uts.Release[:])
	idx, err := kmod.Open(filepath.Join("/lib/modules", release))
	if err != nil {
		log.Debug("no kernel modules to load", "err", err)
		return false
	}
	idx.Params = func(module string) string { return bootparam.ModuleParams(cmdline, module) }
	wanted := []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "squashfs", "overlay", "ext4"}
	switch t.Kind {
	case bootparam.TransportVsock:
		wanted = append(wanted, "vmw_vsock_virtio_transport")
	case bootparam.TransportSerial:
		wanted = append(wanted, "virtio_console")
	}
	for _, m := range wanted {
		if loaded, err := idx.Load(m); err != nil {
			log.Debug("module not loaded", "module", m, "err", err)
		} else if len(loaded) > 0 {
			log.Debug("loaded modules", "modules", strings.Join(loaded, " "))
		}
	}
	return true
}
