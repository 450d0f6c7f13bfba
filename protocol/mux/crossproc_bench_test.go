package mux

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/ferry-vm/ferry/protocol/message"
)

// peerEnv names the role the re-executed test binary plays for
// BenchmarkRoundTrip1KiBPerSide.
const peerEnv = "FERRY_MUX_BENCH_PEER"

// TestBenchPeer is not a test: it is the peer process of
// BenchmarkRoundTrip1KiBPerSide and only runs when that benchmark starts it.
func TestBenchPeer(t *testing.T) {
	role := os.Getenv(peerEnv)
	if role == "" {
		t.Skip("helper process for BenchmarkRoundTrip1KiBPerSide; runs only when spawned by it")
	}
	f := os.NewFile(3, "peer-socket")
	conn, err := net.FileConn(f)
	if err != nil {
		os.Exit(3)
	}
	ctx := context.Background()
	switch role {
	case "rawecho":
		buf := make([]byte, 1024)
		for {
			if _, err := io.ReadFull(conn, buf); err != nil {
				break
			}
			if _, err := conn.Write(buf); err != nil {
				break
			}
		}
	case "server":
		s := Server(conn, Config{Handler: sizedResponder(1024)})
		<-s.Done()
	case "client":
		c := Client(conn, Config{})
		body := bytes.Repeat([]byte("q"), 1024)
		buf := make([]byte, 4096)
		for {
			st, err := c.Open(ctx, &benchRequest, body, true)
			if err != nil {
				break
			}
			var resp message.ResponseHead
			if st.ReadResponse(ctx, &resp) != nil {
				break
			}
			for {
				if _, err := st.Read(buf); err != nil {
					break
				}
			}
		}
	}
	os.Exit(0)
}

// startPeer runs this test binary as the other side of a unix socket pair.
func startPeer(b *testing.B, role string) net.Conn {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "bench"), os.NewFile(uintptr(fds[1]), "peer")
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchPeer$")
	cmd.Env = append(os.Environ(), peerEnv+"="+role)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	theirs.Close()
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		conn.Close()
		cmd.Wait()
	})
	return conn
}

// BenchmarkRoundTrip1KiBPerSide measures the 1 KiB round trip with the peer
// in another process, so that allocs/op counts one side only: "client" is
// the host's side (open, send, read the answer), "server" the guest's side
// (accept, read, answer) handling streams inline.
func BenchmarkRoundTrip1KiBPerSide(b *testing.B) {
	b.Run("client", func(b *testing.B) {
		c := Client(startPeer(b, "server"), Config{})
		defer c.Close()
		benchRoundTrips(b, context.Background(), c)
	})
	b.Run("raw-unix-baseline", func(b *testing.B) {
		// The same 1 KiB each way with no protocol: the floor for the two
		// cases above on this machine.
		conn := startPeer(b, "rawecho")
		buf := make([]byte, 1024)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := conn.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(conn, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("server", func(b *testing.B) {
		s := Server(startPeer(b, "client"), Config{})
		defer s.Close()
		ctx := context.Background()
		resp := bytes.Repeat([]byte("r"), 1024)
		buf := make([]byte, 4096)
		var req message.RequestHead
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			st, err := s.Accept(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := st.RequestHead(&req); err != nil {
				b.Fatal(err)
			}
			if n := drain(b, st, buf); n != 1024 {
				b.Fatalf("request body %d bytes", n)
			}
			head := message.ResponseHead{Status: 200}
			if err := st.WriteResponse(&head, resp, true); err != nil {
				b.Fatal(err)
			}
		}
	})
}
