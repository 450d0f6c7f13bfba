package loopfront

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

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
