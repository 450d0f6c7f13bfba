package loopfront

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/dataplane"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// sideRig is a loop holding one worker channel whose worker is a real
// server session of the protocol, and the channel's side session with a
// real client session on its far end, configured as dataplane.Set
// configures its sessions. The test's goroutine runs the loop (pump).
type sideRig struct {
	t       *testing.T
	l       *loop
	ch      *channel
	session *mux.Session // the net/http front's, on the side session
	worker  *mux.Session
	held    chan struct{} // closed: held requests answer
	seen    chan string   // what the worker saw of each request: "path id"
}

func newSideRig(t *testing.T, maxStreams uint32) *sideRig {
	t.Helper()
	return newSideRigWith(t, maxStreams, nil, nil)
}

// newSideRigWith is newSideRig with the worker's handler (nil: serve)
// and the session's connection wrapped by wrap (nil: as it is).
func newSideRigWith(t *testing.T, maxStreams uint32, handler func(*mux.Stream), wrap func(net.Conn) io.ReadWriteCloser) *sideRig {
	t.Helper()
	l := newTestLoop(t)
	r := &sideRig{t: t, l: l, held: make(chan struct{}), seen: make(chan string, 1024)}
	if handler == nil {
		handler = r.serve
	}

	loopEnd, workerEnd := socketPair(t)
	wf := os.NewFile(uintptr(workerEnd), "worker")
	wconn, err := net.FileConn(wf)
	wf.Close()
	if err != nil {
		t.Fatal(err)
	}
	r.worker = mux.Server(wconn, mux.Config{MaxStreams: maxStreams, Handler: handler})
	t.Cleanup(func() { r.worker.Close() })
	fd, peer, shared, err := greet(os.NewFile(uintptr(loopEnd), "channel"), "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r.ch = &channel{fd: fd, streams: map[uint32]*client{}, next: 101, peer: peer, shared: shared}
	l.channels[fd] = r.ch
	if err := l.watch(unix.EPOLL_CTL_ADD, fd, true, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.closeChannel(r.ch, "test over") })

	far := l.openSide(r.ch)
	if far == nil {
		t.Fatal("no side session")
	}
	conn, err := net.FileConn(far)
	far.Close()
	if err != nil {
		t.Fatal(err)
	}
	var rwc io.ReadWriteCloser = conn
	if wrap != nil {
		rwc = wrap(conn)
	}
	r.session = mux.Client(rwc, mux.Config{MaxFrameSize: dataplane.WorkerMaxFrame, MaxStreams: 1})
	t.Cleanup(func() { r.session.Close() })
	return r
}

// serve is the worker: /held waits for r.held; /upload answers the
// length of its body; anything else answers its path.
func (r *sideRig) serve(st *mux.Stream) {
	var h message.RequestHead
	if err := st.RequestHead(&h); err != nil {
		st.Reset(frame.CodeProtocol, "bad head")
		return
	}
	path := string(h.Path)
	r.seen <- path + " " + strconv.Itoa(int(st.ID()))
	body := []byte(path)
	switch path {
	case "/held":
		select {
		case <-r.held:
		case <-st.Done():
			return
		}
	case "/upload":
		n, _ := io.Copy(io.Discard, st)
		body = []byte(strconv.FormatInt(n, 10))
	}
	st.WriteResponse(&message.ResponseHead{Status: 200}, body, true)
}

// pump runs the loop until done is closed (or fails the test after 10 s).
func (r *sideRig) pump(done <-chan struct{}) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	events := make([]unix.EpollEvent, 16)
	for {
		select {
		case <-done:
			return
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatal("the relay did not get there in 10 s")
		}
		n, _ := unix.EpollWait(r.l.epoll, events, 1)
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if s := r.l.sides[fd]; s != nil {
				if ev.Events&unix.EPOLLOUT != 0 {
					r.l.markChannel(s.ch)
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
					r.l.readSide(s)
				}
			} else if ch := r.l.channels[fd]; ch != nil {
				if ev.Events&unix.EPOLLOUT != 0 {
					r.l.markChannel(ch)
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
					r.l.readChannel(ch)
				}
			}
		}
		r.l.flush()
	}
}

// run runs fn off the loop's goroutine and pumps the loop until it returns.
func (r *sideRig) run(fn func()) {
	r.t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	r.pump(done)
}

// get sends a request on the side session and returns the answer's body.
func (r *sideRig) get(path string, body []byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := r.session.Open(ctx, &message.RequestHead{Method: []byte("POST"), Path: []byte(path)}, body, true)
	if err != nil {
		return "", err
	}
	var h message.ResponseHead
	if err := st.ReadResponse(ctx, &h); err != nil {
		return "", err
	}
	got, err := io.ReadAll(st)
	return string(got), err
}

// The net/http front's session with a worker, relayed by the loop on the
// worker's one channel: it is greeted with the worker's limits, its
// streams get the channel's ids (the loop's own requests take ids from
// the same sequence), bodies beyond a window flow both ways (credit
// passes through), and the channel's slots come back when its streams end.
func TestSideSessionRelaysStreamsOntoTheWorkersChannel(t *testing.T) {
	r := newSideRig(t, 4)
	var hello message.Hello
	var err error
	r.run(func() { hello, err = r.session.Handshake(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	if hello.MaxStreams != 4 || hello.MaxFrameSize != r.ch.peer.MaxFrameSize || hello.InitialWindow != r.ch.peer.InitialWindow {
		t.Fatalf("the side session was greeted with %+v, not the worker's limits %+v", hello, r.ch.peer)
	}

	var got string
	r.run(func() { got, err = r.get("/first", nil) })
	if err != nil || got != "/first" {
		t.Fatalf("first request: %q, %v", got, err)
	}
	if seen := <-r.seen; seen != "/first 101" {
		t.Fatalf("the worker saw %q: the session's stream 1 should be the channel's next id, 101", seen)
	}

	upload := bytes.Repeat([]byte("x"), 3<<20) // twelve windows
	r.run(func() { got, err = r.get("/upload", upload) })
	if err != nil || got != strconv.Itoa(len(upload)) {
		t.Fatalf("a 3 MiB upload through the relay: the worker read %q bytes (%v)", got, err)
	}
	<-r.seen
	r.run(func() { got, err = r.get("/big", nil) }) // (path as body: small)
	<-r.seen
	if s := r.ch.side; len(s.streams) != 0 || len(s.byOwn) != 0 || r.ch.outstanding != 0 {
		t.Fatalf("after every stream ended: %d relayed streams, %d ids, %d outstanding on the channel", len(s.streams), len(s.byOwn), r.ch.outstanding)
	}
}

// The worker's stream limit counts the loop's requests and the side
// session's together: a side stream beyond it is refused
// (REFUSED_STREAM), not sent to a worker that would break the connection.
// And a side session that ends (its VM stops) resets its streams on the
// worker.
func TestSideSessionSharesTheWorkersStreamLimit(t *testing.T) {
	r := newSideRig(t, 2)
	var err error
	r.run(func() { _, err = r.session.Handshake(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	var heldStream *mux.Stream
	r.run(func() {
		heldStream, err = r.session.Open(context.Background(), &message.RequestHead{Method: []byte("GET"), Path: []byte("/held")}, nil, true)
	})
	if err != nil {
		t.Fatal(err)
	}
	r.run(func() { <-r.seen }) // the worker holds it
	r.ch.outstanding++         // one request of the loop's own: the worker is full
	var refused error
	r.run(func() { _, refused = r.get("/more", nil) })
	if refused == nil {
		t.Fatal("a side stream beyond the worker's limit was not refused")
	}
	r.ch.outstanding--
	if len(r.ch.side.streams) != 1 || r.ch.outstanding != 1 {
		t.Fatalf("after the refusal: %d relayed streams, %d outstanding; want the held one only", len(r.ch.side.streams), r.ch.outstanding)
	}

	// The session ends with its stream open: the worker's stream is reset.
	r.session.Close()
	r.run(func() { <-heldStream.Done() })
	workerSide := make(chan struct{})
	go func() {
		defer close(workerSide)
		for r.worker.NumStreams() > 0 {
			time.Sleep(time.Millisecond)
		}
	}()
	r.pump(workerSide)
	if r.ch.side != nil || r.ch.outstanding != 0 {
		t.Fatalf("after the session ended: side %v, %d outstanding on the channel", r.ch.side != nil, r.ch.outstanding)
	}
}

// pumpFor runs the loop for d.
func (r *sideRig) pumpFor(d time.Duration) {
	done := make(chan struct{})
	time.AfterFunc(d, func() { close(done) })
	r.pump(done)
}

// A side session found closed by a failed write (its end closed while
// the loop was writing to it) resets its streams on the worker: the
// channel marked again during the flush is written. It once stayed
// marked as dirty and was never written again, the worker's stream open
// and every later request to that worker stuck.
func TestSideSessionClosedOnAWriteResetsItsStreams(t *testing.T) {
	r := newSideRigWith(t, 8, func(st *mux.Stream) {
		var h message.RequestHead
		st.RequestHead(&h)
		st.WriteResponse(&message.ResponseHead{Status: 200}, nil, false)
		<-st.Done()
	}, nil)
	var err error
	r.run(func() { _, err = r.session.Handshake(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	r.run(func() {
		st, err := r.session.Open(context.Background(), &message.RequestHead{Method: []byte("GET"), Path: []byte("/stream")}, nil, true)
		if err == nil {
			var h message.ResponseHead
			err = st.ReadResponse(context.Background(), &h)
		}
		if err != nil {
			t.Error(err)
		}
	})
	if r.worker.NumStreams() != 1 || r.ch.outstanding != 1 {
		t.Fatalf("the worker has %d streams, the channel %d outstanding; want the one", r.worker.NumStreams(), r.ch.outstanding)
	}
	r.session.Close()
	s := r.ch.side
	s.out.sendFrame(frame.TypePing, frame.FlagAck, 0, make([]byte, 8)) // something to write
	r.l.markChannel(r.ch)
	r.l.flush() // the write fails: closeSide queues a RESET for the worker and marks the channel
	if r.ch.side != nil {
		t.Fatal("the side session was not closed by the failed write")
	}
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for r.worker.NumStreams() > 0 {
			time.Sleep(time.Millisecond)
		}
	}()
	r.pump(gone) // fails the test after 10 s
}

// laggingConn holds the session's reads while its lock is taken: the
// agent's session reader not scheduled for a moment.
type laggingConn struct {
	net.Conn
	mu sync.RWMutex
}

func (c *laggingConn) Read(p []byte) (int, error) {
	c.mu.RLock()
	c.mu.RUnlock()
	return c.Conn.Read(p)
}

// A worker answering 40 requests of the side session with 256 KiB each
// (a window each: nothing beyond flow control) while the session's reader
// lags: the loop holds the frames for it, and does not close the worker's
// channel, with every request on it, as if the worker broke the protocol
// (past 8 MiB it once did).
func TestSideSessionReaderThatLagsDoesNotCostTheWorkerItsChannel(t *testing.T) {
	const streams = 40
	body := bytes.Repeat([]byte("y"), initialWindow)
	lag := &laggingConn{}
	r := newSideRigWith(t, 64, func(st *mux.Stream) {
		var h message.RequestHead
		st.RequestHead(&h)
		st.WriteResponse(&message.ResponseHead{Status: 200}, body, true)
	}, func(c net.Conn) io.ReadWriteCloser { lag.Conn = c; return lag })
	var err error
	r.run(func() { _, err = r.session.Handshake(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	lag.mu.Lock()
	sts := make([]*mux.Stream, streams)
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		for i := range sts {
			sts[i], _ = r.session.Open(context.Background(), &message.RequestHead{Method: []byte("GET"), Path: []byte("/big")}, nil, true)
		}
	}()
	r.pumpFor(2 * time.Second)
	<-opened
	open := r.ch.fd >= 0
	lag.mu.Unlock()
	if !open {
		t.Fatalf("the loop closed the channel of a worker that sent %d responses, each within its stream's window, while the session's reader lagged", streams)
	}
	r.run(func() {
		for i, st := range sts {
			var h message.ResponseHead
			if err := st.ReadResponse(context.Background(), &h); err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			if got, err := io.ReadAll(st); err != nil || len(got) != len(body) {
				t.Errorf("stream %d: %d bytes, %v", i, len(got), err)
				return
			}
		}
	})
}
