package transport

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
)

func TestUnixListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ferry.sock")
	l, err := Listen(contract.Transport{Kind: contract.TransportUnix, Path: path})
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
	l, err := Listen(contract.Transport{Kind: contract.TransportFD, FD: fds[0]})
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
	l, _ := Listen(contract.Transport{Kind: contract.TransportSerial, Name: path})
	go func() { time.Sleep(60 * time.Millisecond); os.WriteFile(path, []byte("hi"), 0o600) }()
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

func TestSerialPortFoundByNameInSysfs(t *testing.T) {
	sys := t.TempDir()
	for port, name := range map[string]string{"vport1p1": "ferry", "vport1p2": "other"} {
		os.MkdirAll(filepath.Join(sys, port), 0o755)
		os.WriteFile(filepath.Join(sys, port, "name"), []byte(name+"\n"), 0o444)
	}
	if got := serialPath(sys, "ferry"); got != "/dev/vport1p1" {
		t.Fatalf("by name: %s", got)
	}
	if got := serialPath(sys, "/dev/hvc1"); got != "/dev/hvc1" {
		t.Fatalf("by path: %s", got)
	}
	// Unknown: the udev path, which Accept keeps trying until it appears.
	if got := serialPath(sys, "missing"); got != "/dev/virtio-ports/missing" {
		t.Fatalf("unknown: %s", got)
	}
}

func TestSerialAcceptWaitsForTheHostsFirstBytes(t *testing.T) {
	// A port with no host reads as end of file, as an empty file does.
	port := filepath.Join(t.TempDir(), "vport1p1")
	os.WriteFile(port, nil, 0o600)
	l, err := Listen(contract.Transport{Kind: contract.TransportSerial, Name: port})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		time.Sleep(3 * serialRetry)
		os.WriteFile(port, []byte("HELLO and more"), 0o600)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 5)
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "HELLO" {
		t.Fatalf("first read %q %v", buf[:n], err)
	}
	rest, _ := io.ReadAll(conn)
	if string(rest) != " and more" {
		t.Fatalf("rest %q", rest)
	}

	// With no host ever, Accept ends with its context.
	os.WriteFile(port, nil, 0o600)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := l.Accept(ctx2); err != context.DeadlineExceeded {
		t.Fatalf("accept without a host: %v", err)
	}
}

// Only the virtio-serial port carries one connection at a time.
func TestOneAtATime(t *testing.T) {
	for _, tc := range []struct {
		t    contract.Transport
		want bool
	}{
		{contract.Transport{Kind: contract.TransportSerial, Name: "ferry"}, true},
		{contract.Transport{Kind: contract.TransportUnix, Path: filepath.Join(t.TempDir(), "ferry.sock")}, false},
	} {
		l, err := Listen(tc.t)
		if err != nil {
			t.Fatal(err)
		}
		if got := OneAtATime(l); got != tc.want {
			t.Errorf("OneAtATime(%s) = %v, want %v", l, got, tc.want)
		}
		l.Close()
	}
}
