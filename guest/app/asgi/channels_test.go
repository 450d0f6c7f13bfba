package asgi

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// pidApp answers every request with its worker's process id.
const pidApp = `import os
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
`

// hostSide receives the pool's worker channels as the host agent does.
type hostSide struct {
	t  *testing.T
	ch *contract.Channels
}

// next waits for the next channel and greets its worker as the host.
func (h *hostSide) next() (contract.WorkerChannel, *mux.Session) {
	h.t.Helper()
	type got struct {
		ch  contract.WorkerChannel
		f   *os.File
		err error
	}
	c := make(chan got, 1)
	go func() {
		ch, f, err := h.ch.Receive()
		c <- got{ch, f, err}
	}()
	var g got
	select {
	case g = <-c:
	case <-time.After(60 * time.Second):
		h.t.Fatal("no worker channel arrived")
	}
	if g.err != nil {
		h.t.Fatal(g.err)
	}
	conn, err := net.FileConn(g.f)
	g.f.Close()
	if err != nil {
		h.t.Fatal(err)
	}
	sess := mux.Client(conn, mux.Config{})
	h.t.Cleanup(func() { sess.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := sess.Handshake(ctx); err != nil {
		h.t.Fatalf("worker %d's channel: %v", g.ch.Worker, err)
	}
	return g.ch, sess
}

// askPid sends one request on sess and returns the answering process id.
func askPid(t *testing.T, sess *mux.Session) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/"), Scheme: []byte("http")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(st)
	if err != nil || rh.Status != 200 {
		t.Fatalf("%d %q %v", rh.Status, b, err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatalf("answer %q", b)
	}
	return pid
}

// Each worker's data channel reaches the host over the channel socket
// with real descriptors, once the worker is configured; the host's
// requests on it are served by that worker itself. A worker that dies
// takes only its channel with it (init held no copy: the host sees the
// end), and its restart passes a new channel with the next start number.
// Stopping the pool says GOAWAY on the data channels before they end.
func TestWorkersPassTheirDataChannels(t *testing.T) {
	if _, err := os.Stat(DefaultPython); err != nil {
		t.Skipf("%s is missing (bash .ci/run installs it)", DefaultPython)
	}
	r, err := reaper.New(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Skipf("no reaper: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)

	hostCh, guestFile, err := contract.ChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	defer hostCh.Close()
	guestCh, err := contract.NewChannels(guestFile)
	if err != nil {
		t.Fatal(err)
	}
	defer guestCh.Close()
	code := t.TempDir()
	if err := os.WriteFile(filepath.Join(code, "main.py"), []byte(pidApp), 0o644); err != nil {
		t.Fatal(err)
	}
	pool, err := Start(context.Background(), Options{App: "main:app", CodeDir: code, Workers: 2, ScriptDir: t.TempDir(), Reaper: r, Channels: guestCh})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = pool.Stop(context.Background())
		}
	}()

	host := &hostSide{t: t, ch: hostCh}
	sessions := map[uint32]*mux.Session{}
	for range 2 {
		ch, sess := host.next()
		if ch.Start != 1 || sessions[ch.Worker] != nil {
			t.Fatalf("unexpected channel %+v", ch)
		}
		sessions[ch.Worker] = sess
	}
	pids := pool.Workers()
	for id, sess := range sessions {
		if got, want := askPid(t, sess), pids[id-1]; got != want {
			t.Fatalf("worker %d's channel answered from pid %d, want %d", id, got, want)
		}
	}

	// Worker 1 dies: its channel ends, worker 2's serves on.
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sessions[1].Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the dead worker's channel did not end at the host")
	}
	if got := askPid(t, sessions[2]); got != pids[1] {
		t.Fatalf("worker 2 answered from %d", got)
	}
	ch, sess := host.next()
	if ch != (contract.WorkerChannel{Worker: 1, Start: 2}) {
		t.Fatalf("after the restart: %+v", ch)
	}
	if got := askPid(t, sess); got == pids[0] || got != pool.Workers()[0] {
		t.Fatalf("the new channel answered from %d (workers %v, dead %d)", got, pool.Workers(), pids[0])
	}

	stopped = true
	stopCtx, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	if err := pool.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*mux.Session{sess, sessions[2]} {
		select {
		case <-s.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("a data channel outlived its worker")
		}
		// The read loop handled the GOAWAY before the end that followed it.
		select {
		case <-s.GoAwayReceived():
		default:
			t.Error("a data channel ended without GOAWAY")
		}
	}
}
