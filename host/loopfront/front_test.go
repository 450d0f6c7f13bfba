package loopfront

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/front"
)

// The loop holds a P for good (the runtime sees it as always running),
// so Serve adds one for the rest of the agent: with GOMAXPROCS=1, other
// goroutines still run freely while the loop waits. Without the extra P
// they ran only when sysmon preempted the loop, every 10 to 20 ms: the
// 20,000 channel hand-offs below would take minutes instead of
// milliseconds.
func TestServeLeavesTheAgentItsProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	f, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- f.Serve(context.Background(), ln, &front.Router{}) }()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.GOMAXPROCS(0) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS is %d while the loop runs, want 2", runtime.GOMAXPROCS(0))
		}
		time.Sleep(time.Millisecond)
	}
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v
		}
	}()
	done := make(chan struct{})
	go func() {
		for i := range 10000 {
			ping <- i
			<-pong
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("goroutines starved while the loop waited")
	}
	close(ping)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Shutdown(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("GOMAXPROCS is %d after Serve, want 1 again", n)
	}
}

// Accepting paused for want of descriptors (EMFILE) resumes at the next
// tick, not only when one of the loop's clients closes: with no client
// (the descriptors were another part of the agent's), the listener
// stayed unwatched for good and no connection was ever accepted again.
func TestPausedAcceptResumesAtTheNextTick(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	file, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	l := newTestLoop(t)
	l.listener = int(file.Fd())
	unix.SetNonblock(l.listener, true)
	if err := l.watch(unix.EPOLL_CTL_ADD, l.listener, false, false); err != nil { // as accept leaves it on EMFILE
		t.Fatal(err)
	}
	l.acceptPaused = true
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l.expire(l.now())
	events := make([]unix.EpollEvent, 4)
	n, _ := unix.EpollWait(l.epoll, events, 2000)
	if n != 1 || int(events[0].Fd) != l.listener {
		t.Fatalf("a tick after the pause, the listener is not watched: %d events", n)
	}
	l.accept()
	defer func() {
		for _, c := range l.clients {
			unix.Close(c.fd)
		}
	}()
	if len(l.clients) != 1 || l.acceptPaused {
		t.Fatalf("after the tick: %d clients accepted, paused %v", len(l.clients), l.acceptPaused)
	}
}
