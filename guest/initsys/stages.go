package initsys

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/app/asgi"
	"github.com/ferry-vm/ferry/guest/app/executable"
	"github.com/ferry-vm/ferry/guest/app/instance"
	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/kmod"
	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/guest/service"
	"github.com/ferry-vm/ferry/guest/setup"
	"github.com/ferry-vm/ferry/guest/transport"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// rootWait bounds how long the initramfs stage waits for the root device
// (its driver probes asynchronously).
const rootWait = 20 * time.Second

// InInitramfs reports whether this is the initramfs stage: PID 1 on the
// kernel's initial ramfs, with ferry.root naming the root image.
func (in *Init) InInitramfs() bool {
	return in.PID1 && in.Params.Root != "" && boot.InInitramfs()
}

// SwitchRoot is the initramfs stage: it mounts the early filesystems,
// loads the modules (from the initramfs) that reach the root image, the
// network and the host, and hands over to the image's /sbin/init. It
// returns only if the root image is unusable, having logged why.
func (in *Init) SwitchRoot() {
	err := in.switchRoot()
	in.Log.Error("cannot start the root image; powering off", "root", in.Params.Root, "err", err)
}

func (in *Init) switchRoot() error {
	if err := boot.MountEarly(); err != nil {
		return err
	}
	in.Timeline.Mark("initramfs")
	if !in.loadModules() {
		in.Log.Warn("the initramfs has no kernel modules; relying on built-in drivers")
	}
	in.Timeline.Mark("modules")
	in.Log.Info("switching to the root image", "root", in.Params.Root)
	return boot.SwitchRoot(context.Background(), boot.RootOptions{Device: in.Params.Root, FS: in.Params.RootFS, Wait: rootWait}, in.Timeline)
}

// ResumeTimeline takes over the timeline of the initramfs stage, when init
// was handed over from one: this process started at the switch, not at
// the kernel's start.
func (in *Init) ResumeTimeline() {
	if earlier, err := boot.DecodeTimeline(os.Getenv(boot.TimelineEnv)); err == nil && len(earlier) > 0 {
		*in.Timeline = boot.Timeline{}
		in.Timeline.Prepend(earlier)
		in.Timeline.Mark("switch")
	}
	os.Unsetenv(boot.TimelineEnv)
}

// Run boots, serves the host and shuts down, stage by stage; shutdown
// begins when the host asks for it (GOAWAY) or shutdown ends (main's
// signals). It returns an exit code for init run by hand: 0 after an
// orderly stop, 1 when a stage could not start, 70 after a panic.
func (in *Init) Run(shutdown context.Context) (code int) {
	defer func() {
		if r := recover(); r != nil {
			in.Log.Error("init panicked; shutting down cleanly", "panic", r, "stack", string(debug.Stack()))
			code = 70
		}
	}()
	if in.PID1 {
		in.mountSystem()
		if in.loadModules() {
			in.Timeline.Mark("modules")
		}
		if in.Params.Overlay {
			in.overlayRoot()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := reaper.New(in.Log)
	if err != nil {
		in.Log.Error("cannot start the reaper", "err", err)
		return 1
	}
	go r.Run(ctx)
	paths, err := in.setupPaths()
	if err != nil {
		in.Log.Error("cannot create a scratch directory", "err", err)
		return 1
	}
	if !in.PID1 {
		defer in.removeScratch(paths.Root)
	}
	svc := in.service(r, paths)
	var front *alephFront
	l, err := transport.Listen(in.Params.Transport)
	if err != nil {
		in.Log.Error("cannot open the host transport", "transport", in.Params.Transport.String(), "err", err)
		if !in.PID1 {
			return 1
		}
	} else {
		if sniffs(in.Params.Transport) {
			l, front = in.listenAleph(ctx, svc, paths, l)
		}
		in.serve(ctx, svc, l)
	}
	select {
	case <-shutdown.Done():
		in.Log.Info("shutting down", "reason", context.Cause(shutdown).Error())
	case reason := <-svc.ShutdownRequested():
		in.Log.Info("shutting down", "reason", reason)
	}
	in.stop(svc, l)
	front.close()
	cancel()
	unix.Sync()
	in.Log.Info("stopped")
	return 0
}

// mountSystem mounts proc, sys, dev and the rest (boot.SystemMounts).
func (in *Init) mountSystem() {
	mounted, err := boot.MountSystem()
	if err != nil {
		in.Log.Warn("some system mounts failed", "err", err)
	}
	in.Log.Debug("mounted", "targets", strings.Join(mounted, " "))
	in.Timeline.Mark("mounts")
}

// Modules returns the kernel modules init loads for transport t: the
// virtio devices, the filesystems of code, volumes and the overlay root,
// and the transport's driver.
func Modules(t contract.Transport) []string {
	wanted := []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "squashfs", "overlay", "ext4"}
	switch t.Kind {
	case contract.TransportVsock:
		wanted = append(wanted, "vmw_vsock_virtio_transport")
	case contract.TransportSerial:
		wanted = append(wanted, "virtio_console")
	}
	return wanted
}

// loadModules loads Modules, when the kernel has them as modules, with the
// parameters the kernel command line gives them. Built-in or absent
// modules are fine. It reports whether there was a module index to load
// from.
func (in *Init) loadModules() bool {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return false
	}
	release := unix.ByteSliceToString(uts.Release[:])
	idx, err := kmod.Open(filepath.Join("/lib/modules", release))
	if err != nil {
		in.Log.Debug("no kernel modules to load", "err", err)
		return false
	}
	idx.Params = func(module string) string { return kmod.CmdlineParams(in.Cmdline, module) }
	for _, m := range Modules(in.Params.Transport) {
		if loaded, err := idx.Load(m); err != nil {
			in.Log.Debug("module not loaded", "module", m, "err", err)
		} else if len(loaded) > 0 {
			in.Log.Debug("loaded modules", "modules", strings.Join(loaded, " "))
		}
	}
	return true
}

// overlayRoot turns a read-only root into a writable overlay on tmpfs
// (ferry.overlay=1), or on the disk ferry.upper names, which keeps what
// is written; on failure the root stays as it is.
func (in *Init) overlayRoot() {
	overlay, on := boot.OverlayRoot, "tmpfs"
	if in.Params.Upper != "" {
		overlay = func() (err error) {
			in.upper, err = boot.OverlayRootOn(in.Params.Upper)
			return err
		}
		on = in.Params.Upper
	}
	if err := overlay(); err != nil {
		in.Log.Error("root stays as it is", "err", err)
	} else {
		if _, err := boot.MountSystem(); err != nil {
			in.Log.Warn("some system mounts failed on the overlay root", "err", err)
		}
		in.Log.Info("root is a writable overlay", "on", on)
	}
	in.Timeline.Mark("overlay")
}

// setupPaths returns where setup writes: the VM's own paths as PID 1; by
// hand, a new scratch directory, never the real /etc.
func (in *Init) setupPaths() (setup.Paths, error) {
	if in.PID1 {
		return setup.DefaultPaths, nil
	}
	dir, err := os.MkdirTemp("", "ferry-init-")
	if err != nil {
		return setup.Paths{}, err
	}
	return setup.Paths{Root: dir, Code: filepath.Join(dir, "code"), Data: filepath.Join(dir, "data"), DevRoot: "/dev", SysBlock: "/sys/block"}, nil
}

// removeScratch removes the scratch directory of init run by hand once
// it has stopped: nothing can find it again (each run makes a new one).
// If anything is still mounted under it (a program's code or volume whose
// unmount failed), it is left as it is, with a warning: removing it would
// reach into what is mounted there.
func (in *Init) removeScratch(root string) {
	dir := root
	if real, err := filepath.EvalSymlinks(root); err == nil {
		dir = real // the mount table has resolved paths
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		in.Log.Warn("scratch directory left in place: cannot read the mount table", "dir", root, "err", err)
		return
	}
	if len(mounts) > 0 {
		in.Log.Warn("scratch directory left in place: something is still mounted under it", "dir", root, "mount", mounts[0].Mountpoint)
		return
	}
	if err := os.RemoveAll(root); err != nil {
		in.Log.Warn("cannot remove the scratch directory", "dir", root, "err", err)
	}
}

// service makes the host-facing service with the app runners.
func (in *Init) service(r *reaper.Reaper, paths setup.Paths) *service.Service {
	api := contract.DefaultAPIAddress
	if !in.PID1 {
		api = "127.0.0.1:0" // the machine's loopback, shared with anything else
	}
	return service.New(service.Options{
		APIAddress: api,
		Log:        in.Log,
		Timeline:   in.Timeline,
		Setup:      setup.Options{Paths: paths, System: in.PID1},
		Agent:      in.Agent,
		Console:    in.console(),
		Apps: map[string]app.Factory{
			contract.InterfaceExecutable: executable.NewFactory(r, in.Log),
			contract.InterfaceASGI:       asgi.NewFactory(r, in.Log, in.channels()),
			contract.InterfaceInstance:   instance.NewFactory(r, in.Log),
		},
	})
}

// channels opens the channel socket the boot parameters name
// (ferry.channels), over which the ASGI workers' data channels go to the
// host; nil when there is none, or it is unusable (then logged: requests
// reach the workers through init).
func (in *Init) channels() *contract.Channels {
	if in.Params.Channels <= 0 {
		return nil
	}
	f := os.NewFile(uintptr(in.Params.Channels), "ferry-channels")
	if f == nil {
		in.Log.Warn("the channel socket is not open; ASGI requests go through init", "fd", in.Params.Channels)
		return nil
	}
	ch, err := contract.NewChannels(f)
	if err != nil {
		in.Log.Warn("unusable channel socket; ASGI requests go through init", "fd", in.Params.Channels, "err", err)
		return nil
	}
	return ch
}

// serve serves the host on l until ctx ends. A panic in the service is
// told to the host and shuts init down cleanly.
func (in *Init) serve(ctx context.Context, svc *service.Service, l transport.Listener) {
	in.Log.Info("listening for the host", "transport", l.String(), "pid1", in.PID1)
	in.Timeline.Mark("transport")
	go func() {
		defer func() {
			if r := recover(); r != nil {
				in.Log.Error("service panicked", "panic", r, "stack", string(debug.Stack()))
				svc.TellHost(fmt.Sprintf("init: internal error, shutting down: %v", r))
				svc.RequestShutdown("internal error")
			}
		}()
		if err := svc.Serve(ctx, l); err != nil && ctx.Err() == nil {
			in.Log.Warn("transport closed", "err", err)
		}
	}()
}

// stop stops the program (SIGTERM, ferry.grace, SIGKILL) and its volumes,
// closes the transport and, as PID 1, ends every process left.
func (in *Init) stop(svc *service.Service, l transport.Listener) {
	if err := svc.Stop(in.Params.Grace); err != nil {
		in.Log.Warn("stopping the program", "err", err)
	}
	if l != nil {
		l.Close()
	}
	if in.PID1 {
		in.stopEverything()
	}
	if in.upper != nil {
		if err := in.upper.Seal(); err != nil {
			in.Log.Warn("the root's disk stays as it is; its journal covers it", "err", err)
		} else {
			in.Log.Info("sealed the root and its disk: read-only and clean")
		}
	}
}

// stopEverything sends SIGTERM to every remaining process, waits briefly,
// then SIGKILL.
func (in *Init) stopEverything() {
	if err := reaper.KillAll(syscall.SIGTERM); err == nil {
		time.Sleep(min(in.Params.Grace, 500*time.Millisecond))
		_ = reaper.KillAll(syscall.SIGKILL)
	} else if err != syscall.ESRCH {
		in.Log.Debug("signalling remaining processes", "err", err)
	}
}
