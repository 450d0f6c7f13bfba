// Package backend defines how the host agent starts a program's VM and
// reaches its init: a Backend starts a VM from a Spec and returns a VM
// whose Conn carries the Ferry session to init. The sandbox backend runs
// init as PID 1 of fresh Linux namespaces; the qemu backend boots a real
// microVM.
package backend

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/ferry-vm/ferry/host/backend/firewall"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Spec is what a backend needs to start one VM.
type Spec struct {
	ProgramID string
	// InitPath is the init binary (sandbox) or the root image's init.
	InitPath string
	// CodePath is the program's code on the host: a directory, or a
	// single file. The guest finds it in its code directory either way:
	// a directory's content, or the file named CodeFile.
	CodePath string
	// CodeFile is the name a single code file gets in the guest's code
	// directory, where the entrypoint looks for it (contract.FileName).
	CodeFile string
	// CodeEncoding is how CodePath is stored: empty for a directory or
	// one file as above, contract.EncodingZip for a zip archive the guest
	// extracts into its code directory, contract.EncodingSquashfs for a
	// squashfs image mounted read-only there.
	CodeEncoding string
	// Data, when set, is unpacked at /data in the guest.
	Data *Data
	// Network asks for a network interface (veth or tap) with addresses
	// the backend allocates.
	Network bool
	// Firewall is what the interface admits: Internet, AllowedPorts and
	// Forwards (the link and addresses are the backend's to fill in).
	Firewall firewall.VM
	// Volumes are the manifest's volumes (attached by backends that
	// support them; others refuse to start the program).
	Volumes []Volume
	// VCPUs and MemoryMiB are the VM's resources (advisory in the sandbox).
	VCPUs, MemoryMiB int
	// Rootfs and Kernel override the backend's default root image and
	// kernel (the manifest's runtime, an instance's rootfs; qemu only).
	Rootfs, Kernel string
	// Instance says the VM is an instance's: no code, init keeps sshd
	// running (contract.InterfaceInstance). Backends that cannot boot
	// one refuse to start it.
	Instance bool
	// RootSizeMiB, when set, keeps what is written to the VM's root from
	// one boot to the next, on a disk of that size per program, created
	// empty on first use (an instance's persistent root). Backends that
	// cannot keep it refuse to start the VM.
	RootSizeMiB int
	// Log receives the backend's own lines.
	Log *slog.Logger
	// Console, if set, receives each line the VM prints on its console.
	Console func(line string)
}

// SingleFile reports whether the code is a single file rather than a
// directory; anything else, or a single file without CodeFile, is an
// error. Packed code (CodeEncoding) is a regular file, and not a
// "single file" in this sense.
func (s *Spec) SingleFile() (bool, error) {
	if s.CodePath == "" {
		return false, nil
	}
	st, err := os.Stat(s.CodePath)
	switch {
	case err != nil:
		return false, fmt.Errorf("code: %w", err)
	case s.CodeEncoding != "":
		if !st.Mode().IsRegular() {
			return false, fmt.Errorf("code %s (%s) is not a regular file", s.CodePath, s.CodeEncoding)
		}
		return false, nil
	case st.IsDir():
		return false, nil
	case !st.Mode().IsRegular():
		return false, fmt.Errorf("code %s is neither a directory nor a regular file", s.CodePath)
	case s.CodeFile == "":
		return false, fmt.Errorf("code %s is a single file, but its name in the guest is not set", s.CodePath)
	}
	return true, nil
}

// Data is a program's input data on the host.
type Data struct {
	Path string
	// Encoding is contract.EncodingZip (extracted at /data) or
	// contract.EncodingSquashfs (mounted read-only at /data).
	Encoding string
}

// DataMount is where the guest finds a program's data.
const DataMount = "/data"

// Volume is one volume a program declares.
type Volume struct {
	Mount string // where the program sees it
	// Image is an immutable volume's filesystem image on the host
	// (squashfs, or any filesystem the guest's kernel mounts read-only).
	Image string
	// Ref is an immutable volume's digest in the store: the manager
	// fetches it and sets Image before the backend sees the volume.
	Ref string
	// Persistent volumes are kept between boots, per program and Name
	// (required: the manifest's, or its default, manifest.Volume's
	// ImageName), created empty (ext4) at SizeMiB.
	Persistent bool
	Name       string
	SizeMiB    int
	// Ephemeral volumes are created empty (ext4) at SizeMiB for one boot
	// and removed when the VM ends.
	Ephemeral bool
}

// Guest says where the VM sees the program's code and volumes, in the
// terms of init's configuration.
type Guest struct {
	Code    contract.Code
	Volumes []contract.Volume
	// Data, when set, is a zip archive init extracts at /data (data the
	// backend mounted there itself is not listed).
	Data *contract.Source
}

// Network is the addressing of a VM's interface, host side and guest side.
type Network struct {
	HostIPv4, GuestIPv4 string // with prefix length, e.g. 10.200.0.1/30
	HostIPv6, GuestIPv6 string
	// DNS are the resolvers the guest gets.
	DNS []string
}

// VM is a running VM.
type VM interface {
	// Conn is the byte stream to the VM's init (the Ferry session).
	Conn() io.ReadWriteCloser
	// Guest is where the code and volumes appear inside the VM.
	Guest() Guest
	// Network is the VM's addressing, or nil when it has no network.
	Network() *Network
	// Done is closed when the VM has ended; Err then says how.
	Done() <-chan struct{}
	Err() error
	// Kill ends the VM at once (the graceful path is a GOAWAY on the
	// session, after which init powers off).
	Kill()
	// Describe says what kind of VM this is, for logs ("sandbox pid 4242").
	Describe() string
}

// ChannelVM is a VM whose transport carries a connection per ASGI worker
// (the sandbox's unix sockets): init passes each worker's data channel
// over the channel socket returned here, and the host sends the worker's
// requests there directly (protocol/SPEC.md §11). The socket is closed when
// the VM ends. A VM without it (qemu over virtio-serial) has its requests
// routed by init.
type ChannelVM interface {
	VM
	WorkerChannels() *contract.Channels
}

// RootImages is implemented by backends that boot Spec.Rootfs (qemu).
// The others have a root of their own (the sandbox's --sandbox-root):
// the manager fetches no runtime by ref for them.
type RootImages interface {
	BootsRootImages() bool
}

// Backend starts VMs.
type Backend interface {
	Name() string
	Start(ctx context.Context, spec Spec) (VM, error)
}
