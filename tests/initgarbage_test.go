package tests

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Garbage and truncated frames on init's transport get protocol errors;
// init keeps running and serves a good session afterwards, even beside a
// connection that stalls in its HELLO; a newer host replaces it.
func TestInitSurvivesGarbageOnItsTransport(t *testing.T) {
	bin, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "ferry.sock")
	out := &syncbuf.Buffer{}
	cmd := exec.Command(bin, "-transport", "unix:"+sock)
	// init by hand writes under a scratch directory in TMPDIR, which it
	// removes when it stops; this one is killed, and the test's directory
	// takes the scratch directory with it.
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("init output:\n%s", out.String())
		}
	})

	dial := func() net.Conn {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("init does not listen on %s: %v", sock, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A host's connection has no deadline: its session ends only when
	// init closes it.
	hostConn := func() net.Conn {
		c := dial()
		c.SetDeadline(time.Time{})
		return c
	}
	helloPayload := (&message.Hello{Version: 1, Role: message.RoleClient, MaxFrameSize: frame.DefaultMaxSize, InitialWindow: 1 << 16, MaxStreams: 10}).Append(nil)
	hello := frame.AppendHeader(nil, frame.Header{Type: frame.TypeHello, Length: uint32(len(helloPayload))})
	hello = append(hello, helloPayload...)

	attacks := []struct {
		name  string
		bytes []byte
		code  uint32 // GOAWAY code expected; 0: just a closed connection
	}{
		{"http request instead of hello", []byte("GET / HTTP/1.1\r\nHost: guest\r\n\r\n"), frame.CodeProtocol},
		{"unknown frame type", append(append([]byte(nil), hello...), frame.AppendHeader(nil, frame.Header{Type: 0x55, StreamID: 1})...), frame.CodeProtocol},
		{"huge declared length", append(append([]byte(nil), hello...), frame.AppendHeader(nil, frame.Header{Type: frame.TypeData, StreamID: 1, Length: 1 << 30})...), frame.CodeFrameSize},
		{"data on a stream never opened", append(append([]byte(nil), hello...), append(frame.AppendHeader(nil, frame.Header{Type: frame.TypeData, StreamID: 9, Length: 3}), "abc"...)...), frame.CodeProtocol},
		{"truncated frame", append(append([]byte(nil), hello...), append(frame.AppendHeader(nil, frame.Header{Type: frame.TypeConfig, Length: 500}), `{"prog`...)...), 0},
		{"truncated header", append(append([]byte(nil), hello...), 0x10, 0x00, 0x00), 0},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			c := dial()
			defer c.Close()
			if _, err := c.Write(a.bytes); err != nil {
				t.Fatal(err)
			}
			if a.code == 0 {
				c.(*net.UnixConn).CloseWrite() // the stream ends mid-frame
			}
			r := frame.NewReader(c, frame.MaxMaxSize)
			var goaway *message.GoAway
			for {
				h, p, err := r.ReadFrame()
				if err != nil {
					break // init closed the connection
				}
				if h.Type == frame.TypeGoAway {
					goaway = &message.GoAway{}
					if err := goaway.Unmarshal(p); err != nil {
						t.Fatal(err)
					}
				}
			}
			if a.code != 0 && (goaway == nil || goaway.Code != a.code) {
				t.Fatalf("GOAWAY %+v, want code %s", goaway, frame.CodeName(a.code))
			}
			select {
			case err := <-exited:
				t.Fatalf("init exited: %v", err)
			default:
			}
		})
	}

	// A connection that sends part of a HELLO and stalls, kept open,
	// does not hold init: a well-behaved host is served beside it.
	stalled := dial()
	defer stalled.Close()
	if _, err := stalled.Write(hello[:frame.HeaderSize+3]); err != nil {
		t.Fatal(err)
	}
	sess := mux.Client(hostConn(), mux.Config{})
	defer sess.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	peer, err := sess.Handshake(ctx)
	if err != nil {
		t.Fatalf("handshake after garbage: %v", err)
	}
	if string(peer.Agent) == "" {
		t.Fatal("init did not name itself in HELLO")
	}
	if _, err := sess.Ping(ctx); err != nil {
		t.Fatalf("ping after garbage: %v", err)
	}

	// The newest host to complete its handshake wins: the one before is
	// closed.
	newer := mux.Client(hostConn(), mux.Config{})
	defer newer.Close()
	if _, err := newer.Ping(ctx); err != nil {
		t.Fatalf("ping from a newer host: %v", err)
	}
	select {
	case <-sess.Done():
	case <-ctx.Done():
		t.Fatal("the older host's session stayed open after a newer one's handshake")
	}
}
