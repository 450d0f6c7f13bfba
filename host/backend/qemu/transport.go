package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// VsockPort is the port init listens on with vsock.
const VsockPort = contract.DefaultVsockPort

// Transports Options.Transport may name.
const (
	TransportAuto   = "auto"                   // vsock when /dev/vhost-vsock works, else serial
	TransportVsock  = contract.TransportVsock  // vhost-vsock-device, init listens on VsockPort
	TransportSerial = contract.TransportSerial // a virtio-serial port whose socket QEMU connects to the agent
)

// vhostVsockUsable reports whether the host can give VMs a vsock device.
func vhostVsockUsable() error {
	fd, err := unix.Open("/dev/vhost-vsock", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}

// transport is how the agent reaches init in one VM.
type transport interface {
	qemuArgs() []string
	guestTransport() contract.Transport // what init listens on (ferry.transport)
	// connect returns the connection to init, giving up when the VM ends
	// (vmDone) or ctx does.
	connect(ctx context.Context, vmDone <-chan struct{}) (net.Conn, error)
	close()
}

// serialTransport: QEMU connects the port's chardev to a socket the agent
// listens on, at once when it starts; the host's first bytes wait in the
// socket until the guest opens its port, so nothing is lost while it boots.
type serialTransport struct {
	sock string
	ln   *net.UnixListener
}

// maxSocketPath is the longest path a unix socket address holds
// (sun_path's 108 bytes, less the terminating NUL).
const maxSocketPath = 107

func newSerialTransport(runDir string, index uint64) (*serialTransport, error) {
	sock := filepath.Join(runDir, fmt.Sprintf("%d-%d.sock", os.Getpid(), index))
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("transport socket %s: the path is longer than a unix socket address takes (%d bytes); use a shorter state directory", sock, maxSocketPath)
	}
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, err
	}
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("transport socket: %w", err)
	}
	return &serialTransport{sock: sock, ln: ln}, nil
}

func (s *serialTransport) qemuArgs() []string {
	return []string{
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=ferry,path=" + escapeOpt(s.sock),
		"-device", "virtserialport,chardev=ferry,name=" + PortName,
	}
}

func (s *serialTransport) guestTransport() contract.Transport {
	return contract.Transport{Kind: contract.TransportSerial, Name: PortName}
}

func (s *serialTransport) connect(ctx context.Context, vmDone <-chan struct{}) (net.Conn, error) {
	type accepted struct {
		conn net.Conn
		err  error
	}
	got := make(chan accepted, 1)
	go func() {
		c, err := s.ln.Accept()
		got <- accepted{c, err}
	}()
	select {
	case a := <-got:
		return a.conn, a.err
	case <-vmDone:
		s.ln.Close()
		return nil, errVMEnded
	case <-ctx.Done():
		s.ln.Close()
		return nil, ctx.Err()
	}
}

func (s *serialTransport) close() { s.ln.Close(); os.Remove(s.sock) }

// vsockTransport: a vhost-vsock device with its own context id; init
// listens on VsockPort once it has booted, so the agent dials until it
// answers.
type vsockTransport struct{ cid uint32 }

// vsockCID picks a context id unlikely to collide with another agent's
// VMs on the host: the agent's pid and the VM's index (ids below 3 are
// reserved).
func vsockCID(index uint64) uint32 {
	return 3 + uint32(os.Getpid()&0xffff)<<12 + uint32(index&0xfff)
}

func (v *vsockTransport) qemuArgs() []string {
	return []string{"-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", v.cid)}
}

func (v *vsockTransport) guestTransport() contract.Transport {
	return contract.Transport{Kind: contract.TransportVsock, Port: VsockPort}
}

func (v *vsockTransport) connect(ctx context.Context, vmDone <-chan struct{}) (net.Conn, error) {
	for {
		c, err := vsock.Dial(v.cid, VsockPort, nil)
		if err == nil {
			return c, nil
		}
		select {
		case <-vmDone:
			return nil, errVMEnded
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (v *vsockTransport) close() {}
