// Package transport gives init the byte stream the host talks to it over,
// as chosen by ferry.transport on the kernel command line: a vsock listener
// (Firecracker, QEMU vhost-vsock), a virtio-serial port (QEMU without
// vhost), an inherited connected file descriptor or a unix socket listener
// (the sandbox backend and tests).
package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// Listener yields host connections, one at a time.
type Listener interface {
	// Accept waits for the next connection from the host.
	Accept(ctx context.Context) (io.ReadWriteCloser, error)
	Close() error
	String() string
}

// OneAtATime reports whether l carries one host connection at a time:
// its next Accept may be called only once the connection it returned has
// ended. A virtio-serial port is one: it has a single pair of ends, which
// a second open cannot share (the port is opened again after each
// session). Other listeners take connections while one is served.
func OneAtATime(l Listener) bool {
	o, ok := l.(interface{ OneAtATime() bool })
	return ok && o.OneAtATime()
}

// Listen opens the transport t.
func Listen(t contract.Transport) (Listener, error) {
	switch t.Kind {
	case contract.TransportVsock:
		l, err := vsock.Listen(t.Port, nil)
		if err != nil {
			return nil, fmt.Errorf("vsock port %d: %w", t.Port, err)
		}
		return &netListener{l: l, name: t.String()}, nil
	case contract.TransportUnix:
		os.Remove(t.Path)
		if err := os.MkdirAll(filepath.Dir(t.Path), 0o755); err != nil {
			return nil, err
		}
		l, err := net.Listen("unix", t.Path)
		if err != nil {
			return nil, fmt.Errorf("unix socket %s: %w", t.Path, err)
		}
		return &netListener{l: l, name: t.String()}, nil
	case contract.TransportFD:
		f := os.NewFile(uintptr(t.FD), "ferry-transport")
		if f == nil {
			return nil, fmt.Errorf("fd %d is not open", t.FD)
		}
		var conn io.ReadWriteCloser = f
		// A socket gets the netpoller (deadlines, no blocked threads).
		if c, err := net.FileConn(f); err == nil {
			f.Close()
			conn = c
		}
		return &onceListener{conn: conn, name: t.String(), closed: make(chan struct{})}, nil
	case contract.TransportSerial:
		return &serialListener{port: t.Name, name: t.String(), closed: make(chan struct{})}, nil
	}
	return nil, fmt.Errorf("unknown transport %q", t.Kind)
}

// serialPath finds a virtio-serial port by name. udev makes the
// /dev/virtio-ports/NAME links; without udev the name is read from
// /sys/class/virtio-ports/vportNpM/name and the device is /dev/vportNpM.
func serialPath(sysClass, name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	if _, err := os.Stat("/dev/virtio-ports/" + name); err == nil {
		return "/dev/virtio-ports/" + name
	}
	ports, _ := os.ReadDir(sysClass)
	for _, p := range ports {
		b, err := os.ReadFile(filepath.Join(sysClass, p.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + p.Name()
		}
	}
	return "/dev/virtio-ports/" + name
}

// ErrClosed is returned by Accept after Close.
var ErrClosed = errors.New("transport closed")

type netListener struct {
	l    net.Listener
	name string
}

func (n *netListener) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	stop := context.AfterFunc(ctx, func() { n.l.Close() })
	defer stop()
	c, err := n.l.Accept()
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return c, err
}
func (n *netListener) Close() error   { return n.l.Close() }
func (n *netListener) String() string { return n.name }

// onceListener hands out one inherited connection; there is no second.
type onceListener struct {
	mu     sync.Mutex
	conn   io.ReadWriteCloser
	name   string
	closed chan struct{}
	once   sync.Once
}

func (o *onceListener) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	o.mu.Lock()
	c := o.conn
	o.conn = nil
	o.mu.Unlock()
	if c != nil {
		return c, nil
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-o.closed:
		return nil, ErrClosed
	}
}

func (o *onceListener) Close() error {
	o.once.Do(func() { close(o.closed) })
	return nil
}
func (o *onceListener) String() string { return o.name }

// serialListener opens the virtio-serial port. A port reads as end of
// file while no host is connected to its other end, so a connection is
// handed out only once the host has sent its first bytes (the host speaks
// first: HELLO); after the host disconnects, the port is opened again for
// the next session.
type serialListener struct {
	port   string // name or /dev path
	name   string
	closed chan struct{}
	once   sync.Once
}

// serialRetry is how often a port with no host (or no device yet) is retried.
const serialRetry = 50 * time.Millisecond

func (s *serialListener) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	for {
		select {
		case <-s.closed:
			return nil, ErrClosed
		default:
		}
		// The device appears once its driver has loaded.
		if f, err := os.OpenFile(serialPath("/sys/class/virtio-ports", s.port), os.O_RDWR, 0); err == nil {
			if conn := s.firstBytes(ctx, f); conn != nil {
				return conn, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closed:
			return nil, ErrClosed
		case <-time.After(serialRetry):
		}
	}
}

// firstBytes waits for the host's first bytes on an open port and returns
// a connection that reads them first; nil (and f closed) if the port has
// no host or ctx ends.
func (s *serialListener) firstBytes(ctx context.Context, f *os.File) io.ReadWriteCloser {
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 4096)
	n, _ := f.Read(buf)
	if n == 0 {
		f.Close()
		return nil
	}
	f.SetReadDeadline(time.Time{})
	return &peeked{ReadWriteCloser: f, first: buf[:n]}
}

func (s *serialListener) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}
func (s *serialListener) String() string { return s.name }

// OneAtATime is true: see the package function.
func (s *serialListener) OneAtATime() bool { return true }
