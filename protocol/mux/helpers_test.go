package mux

import (
	"context"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// unixPair returns the two ends of a real connected unix stream socket pair.
func unixPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatalf("FileConn: %v", err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// sessionPair returns a connected client and server session, closed when the
// test ends.
func sessionPair(t testing.TB, ccfg, scfg Config) (*Session, *Session) {
	t.Helper()
	a, b := unixPair(t)
	c := Client(a, ccfg)
	s := Server(b, scfg)
	t.Cleanup(func() {
		c.Close()
		s.Close()
	})
	return c, s
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// zstdZeros compresses n zero bytes.
func zstdZeros(t testing.TB, n int) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(make([]byte, n), nil)
}
