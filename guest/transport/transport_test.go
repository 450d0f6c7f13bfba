package transport

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/bootparam"
)

func TestUnixListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ferry.sock")
	l, err := Listen(bootparam.Transport{Kind: bootparam.TransportUnix, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	conn, err := l.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := conn.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q %v", buf, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Accept(ctx); err == nil {
		t.Fatal("Accept did not honour its context")
	}
}

func TestInheritedFD(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	defer peer.Close()
	l, err := Listen(bootparam.Transport{Kind: bootparam.TransportFD, FD: fds[0]})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := l.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	peer.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := conn.Read(buf); err != nil || buf[0] != 'x' {
		t.Fatalf("read %q %v", buf, err)
	}
	// There is only one inherited connection: the next Accept waits until Close.
	go func() { time.Sleep(20 * time.Millisecond); l.Close() }()
	if _, err := l.Accept(context.Background()); err != ErrClosed {
		t.Fatalf("second Accept: %v", err)
	}
}

func TestSerialWaitsForDevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vport1p1")
	l, _ := Listen(bootparam.Transport{Kind: bootparam.TransportSerial, Name: path})
	go func() { time.Sleep(60 * time.Millisecond); os.WriteFile(path, nil, 0o600) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	l.Close()
	if _, err := l.Accept(context.Background()); err != ErrClosed {
		t.Fatalf("Accept after Close: %v", err)
	}
}
