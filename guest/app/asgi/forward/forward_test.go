package forward

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// socketPair returns the two ends of a connected unix stream socket pair.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return conns[0], conns[1]
}

// relayedWebSocket sets up host -> init -> worker as in a VM: a websocket
// stream opened by the host, carried by Stream to a stream the worker
// accepts with 101. It returns the host's and the worker's ends.
func relayedWebSocket(t *testing.T) (hostEnd, workerEnd *mux.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	a, b := socketPair(t)
	hostSess, initHost := mux.Client(a, mux.Config{}), mux.Server(b, mux.Config{})
	c, d := socketPair(t)
	initPeer, workerSess := mux.Client(c, mux.Config{}), mux.Server(d, mux.Config{})
	relayed := make(chan struct{})
	t.Cleanup(func() {
		for _, s := range []*mux.Session{hostSess, initHost, initPeer, workerSess} {
			s.Close()
		}
		<-relayed
	})
	go func() {
		defer close(relayed)
		host, err := initHost.Accept(ctx)
		if err != nil {
			return
		}
		peer, err := Open(ctx, initPeer, host)
		if err != nil {
			return
		}
		Stream(host, peer, nil)
	}()
	hostEnd, err := hostSess.Open(ctx, &message.RequestHead{Kind: message.KindWebSocket, Path: []byte("/ws")}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	workerEnd, err = workerSess.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := workerEnd.WriteResponse(&message.ResponseHead{Status: 101}, nil, false); err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := hostEnd.ReadResponse(ctx, &rh); err != nil || rh.Status != 101 {
		t.Fatalf("accept: %d %v", rh.Status, err)
	}
	return hostEnd, workerEnd
}

// init forwards a message's fragments as they come: the worker gets the
// first part before the host has sent the rest, and the parts make the
// message whole.
func TestWebSocketForwardsFragmentsAsTheyCome(t *testing.T) {
	host, worker := relayedWebSocket(t)
	first := bytes.Repeat([]byte("first part "), 3000)
	if _, err := host.WriteFragment(true, true, first); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 8<<10)
	worker.SetReadDeadline(time.Now().Add(20 * time.Second))
	for len(got) < len(first) {
		n, text, more, err := worker.ReadFragment(buf)
		if err != nil || !text || !more {
			t.Fatalf("first part, after %d bytes: text %v more %v: %v (the relay waited for the whole message)", len(got), text, more, err)
		}
		got = append(got, buf[:n]...)
	}
	rest := bytes.Repeat([]byte("and the rest "), 100000) // 1.3 MiB, beyond both windows
	go host.WriteFragment(true, false, rest)
	for more := true; more; {
		var n int
		var err error
		n, _, more, err = worker.ReadFragment(buf)
		if err != nil {
			t.Fatalf("rest after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	if want := append(first, rest...); !bytes.Equal(got, want) {
		t.Fatalf("worker got %d bytes, host sent %d", len(got), len(want))
	}
}

// A worker that does not receive holds up the relay toward it; the host's
// reset (the client left) still reaches it. And a worker that closes and
// resets while the host's message waits: the host sees the close.
func TestWebSocketEndsWhileWorkerIsNotReceiving(t *testing.T) {
	t.Run("host reset reaches the worker", func(t *testing.T) {
		host, worker := relayedWebSocket(t)
		go host.WriteMessage(false, make([]byte, 4<<20))
		waitBuffered(t, worker)
		host.Reset(frame.CodeCancel, "client went away")
		select {
		case <-worker.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("the worker's stream was not reset after the host's")
		}
		var serr *mux.StreamError
		if err := worker.Err(); !errors.As(err, &serr) || !serr.Remote {
			t.Fatalf("worker's stream ended with %v, want a reset from init", err)
		}
	})
	t.Run("worker close reaches the host", func(t *testing.T) {
		host, worker := relayedWebSocket(t)
		go host.WriteMessage(false, make([]byte, 4<<20))
		waitBuffered(t, worker)
		if err := worker.CloseWebSocket(1000, "bye"); err != nil {
			t.Fatal(err)
		}
		worker.Reset(frame.CodeNoError, "websocket closed")
		host.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, _, _, err := host.ReadFragment(nil)
		var closed *mux.WSCloseError
		if !errors.As(err, &closed) || closed.Code != 1000 || closed.Reason != "bye" {
			t.Fatalf("host saw %v, want the worker's close", err)
		}
	})
}

// waitBuffered waits until bytes wait unread at st.
func waitBuffered(t *testing.T, st *mux.Stream) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for st.Buffered() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing reached the worker")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
