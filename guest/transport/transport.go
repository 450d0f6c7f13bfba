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
	"sync"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/ferry-vm/ferry/guest/bootparam"
)

// Listener yields host connections, one at a time.
type Listener interface {
	// Accept waits for the next connection from the host.
	Accept(ctx context.Context) (io.ReadWriteCloser, error)
	Close() error
	String() string
}

// Listen opens the transport t.
func Listen(t bootparam.Transport) (Listener, error) {
	switch t.Kind {
	case bootparam.TransportVsock:
		l, err := vsock.Listen(t.Port, nil)
		if err != nil {
			return nil, fmt.Errorf("vsock port %d: %w", t.Port, err)
		}
		return &netListener{l: l, name: t.String()}, nil
	case bootparam.TransportUnix:
		os.Remove(t.Path)
		if err := os.MkdirAll(filepath.Dir(t.Path), 0o755); err != nil {
			return nil, err
		}
		l, err := net.Listen("unix", t.Path)
		if err != nil {
			return nil, fmt.Errorf("unix socket %s: %w", t.Path, err)
		}
		return &netListener{l: l, name: t.String()}, nil
	case bootparam.TransportFD:
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
	case bootparam.TransportSerial:
		return &serialListener{path: serialPath(t.Name), name: t.String(), closed: make(chan struct{})}, nil
	}
	return nil, fmt.Errorf("unknown transport %q", t.Kind)
}

func serialPath(name string) string {
	if filepath.IsAbs(name) {
		return name
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

// serialListener opens the virtio-serial port; after the host side
// disconnects, the port is opened again for the next session.
type serialListener struct {
	path   string
	name   string
	closed chan struct{}
	once   sync.Once
}

func (s *serialListener) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	for {
		select {
		case <-s.closed:
			return nil, ErrClosed
		default:
		}
		f, err := os.OpenFile(s.path, os.O_RDWR, 0)
		if err == nil {
			return f, nil
		}
		// The device appears once its driver has loaded.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closed:
			return nil, ErrClosed
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *serialListener) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}
func (s *serialListener) String() string { return s.name }
