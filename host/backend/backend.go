// Package backend defines how the host agent starts a program's VM and
// reaches its init: a Backend starts a VM from a Spec and returns a VM
// whose Conn carries the Ferry session to init. The sandbox backend runs
// init as PID 1 of fresh Linux namespaces; the qemu backend boots a real
// microVM.
package backend

import (
	"context"
	"io"
	"log/slog"
)

// Spec is what a backend needs to start one VM.
type Spec struct {
	ProgramID string
	// InitPath is the init binary (sandbox) or the root image's init.
	InitPath string
	// CodeDir is the program's code on the host.
	CodeDir string
	// Network asks for a network interface (veth or tap) with addresses
	// the backend allocates.
	Network bool
	// Volumes is how many volumes the manifest declares (attached by
	// backends that support them).
	Volumes int
	// VCPUs and MemoryMiB are the VM's resources (advisory in the sandbox).
	VCPUs, MemoryMiB int
	// Log receives the backend's and the VM console's lines.
	Log *slog.Logger
}

// Network is the addressing of a VM's interface, host side and guest side.
type Network struct {
	HostIPv4, GuestIPv4 string // with prefix length, e.g. 10.200.0.1/30
	HostIPv6, GuestIPv6 string
}

// VM is a running VM.
type VM interface {
	// Conn is the byte stream to the VM's init (the Ferry session).
	Conn() io.ReadWriteCloser
	// GuestCodeDir is where the program's code appears inside the VM.
	GuestCodeDir() string
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

// Backend starts VMs.
type Backend interface {
	Name() string
	Start(ctx context.Context, spec Spec) (VM, error)
}
