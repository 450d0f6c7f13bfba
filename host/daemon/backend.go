package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
	"github.com/ferry-vm/ferry/host/backend/qemu"
	"github.com/ferry-vm/ferry/host/backend/sandbox"
)

// BackendOptions choose and configure the VM backend.
type BackendOptions struct {
	// Name is "sandbox" (namespaces) or "qemu" (a microVM).
	Name string
	// BootTimeout bounds a boot, from the backend's start to init's
	// configuration result (the lifecycle manager's default when 0).
	BootTimeout time.Duration

	// Images is the directory of the qemu backend's vmlinuz, initrd.img
	// and rootfs.squashfs; Kernel, Initrd and Rootfs override each.
	Images, Kernel, Initrd, Rootfs string
	// Accel is auto, kvm or tcg; Transport auto, vsock or serial.
	Accel, Transport string
	// StateDir is the agent's state directory: the qemu backend keeps its
	// code images and volumes in StateDir/qemu, the sandbox its volumes in
	// StateDir/sandbox/volumes.
	StateDir string
	// NodeSlot is the agent's slot in its cluster (0 for a lone agent):
	// its VMs' network names, address ranges and uid ranges come from it.
	NodeSlot int
	// IPv6Prefix is the node's routed prefix (--ipv6-prefix; none when
	// not valid), Uplink its interface to the outside (--uplink; empty:
	// the default route's), DNS the VMs' resolvers (--dns; nil: the
	// host's).
	IPv6Prefix netip.Prefix
	Uplink     string
	DNS        []netip.Addr

	// SandboxRoot is the directory sandboxed guests see as their root,
	// read-only; SandboxUIDBase the first host uid of their user
	// namespaces; SandboxPids the most processes and threads per VM. Zero
	// values keep the sandbox's defaults.
	SandboxRoot    string
	SandboxUIDBase uint32
	SandboxPids    int64
}

// netOptions are the options of the node's VM networking.
func (o BackendOptions) netOptions(log *slog.Logger) hostnet.Options {
	return hostnet.Options{IPv6Prefix: o.IPv6Prefix, Uplink: o.Uplink, DNS: o.DNS, NodeSlot: o.NodeSlot, Log: log}
}

// newBackend returns the backend o chooses, linking VMs through net.
func newBackend(o BackendOptions, net *hostnet.Host, log *slog.Logger) (backend.Backend, error) {
	switch o.Name {
	case "sandbox":
		b := sandbox.New(log)
		b.Slots, b.Net = hostnet.NewPool(o.NodeSlot), net
		b.VolumeDir = filepath.Join(o.StateDir, "sandbox", "volumes")
		if o.SandboxRoot != "" {
			b.RootDir = o.SandboxRoot
		}
		if o.SandboxUIDBase != 0 {
			b.UIDBase = o.SandboxUIDBase
		}
		if o.SandboxPids != 0 {
			b.Pids = o.SandboxPids
		}
		if fi, err := os.Stat(b.RootDir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--sandbox-root %s: not a directory", b.RootDir)
		}
		if err := b.CleanStale(); err != nil {
			log.Warn("cleaning up after an earlier agent", "err", err)
		}
		return b, nil
	case "qemu":
		for _, old := range []string{"code", "volumes"} {
			if fi, err := os.Stat(filepath.Join(o.StateDir, old)); err == nil && fi.IsDir() {
				log.Warn("the state directory holds the qemu backend's files where earlier agents kept them; they are now under qemu/: move them there (persistent volumes in particular)",
					"found", filepath.Join(o.StateDir, old), "now", filepath.Join(o.StateDir, "qemu", old))
			}
		}
		or := func(v, def string) string {
			if v != "" {
				return v
			}
			return filepath.Join(o.Images, def)
		}
		return qemu.New(qemu.Options{Kernel: or(o.Kernel, "vmlinuz"), Initrd: or(o.Initrd, "initrd.img"), Rootfs: or(o.Rootfs, "rootfs.squashfs"),
			Accel: o.Accel, Transport: o.Transport, StateDir: filepath.Join(o.StateDir, "qemu"), Slots: hostnet.NewPool(o.NodeSlot), Net: net, Log: log})
	}
	return nil, fmt.Errorf("unknown backend %q (sandbox or qemu)", o.Name)
}
