package tests

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Requests that wait in the loop for a worker channel (here: the only
// worker's channel has 4 MiB of heads it has not read, as its app blocks)
// when the agent is told to stop all get an answer, 200 or 503, behind
// either front. The loop once handed them to the net/http server, whose
// listener the drain had just closed, and their connections closed
// unanswered.
func TestLoopFrontDrainServesRequestsWaitingForAChannel(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	for _, f := range []string{"net/http", "loop"} {
		t.Run(strings.ReplaceAll(f, "/", "-"), func(t *testing.T) {
			p := startAgent(t, "run", agentOptions{}, "--front", f, "--workers", "1", dir, "main:app")
			blocked := make(chan string, 1)
			go func() { blocked <- loopExchange(p.addr, "GET /block?s=3 HTTP/1.1\r\nHost: x\r\n\r\n", nil, 1) }()
			time.Sleep(300 * time.Millisecond)
			const clients = 200 // 200 heads of 30 KiB: past the 4 MiB backlog
			pad := strings.Repeat("p", 30<<10)
			got := make(chan string, clients)
			for range clients {
				go func() { got <- loopExchange(p.addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad+"\r\n\r\n", nil, 1) }()
			}
			time.Sleep(700 * time.Millisecond)
			p.cmd.Process.Signal(syscall.SIGTERM)
			bad := 0
			for range clients {
				if g := <-got; !strings.HasPrefix(g, "200 ") && !strings.HasPrefix(g, "503 ") {
					if bad++; bad <= 3 {
						t.Errorf("%s front: a request taken before the stop: %s", f, g)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%s front: %d of %d requests taken before the stop got no answer", f, bad, clients)
			}
			<-blocked
		})
	}
}

// A request the loop handed to the net/http server (HTTP/1.0 here), in
// flight when the agent is told to stop, is answered: the net/http server
// reaches the worker through the loop (its side session on the worker's
// channel), and the loop keeps the channels until that server has
// drained, not only until its own requests are done.
func TestLoopFrontDrainServesHandedOverRequests(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	for _, f := range []string{"net/http", "loop"} {
		t.Run(strings.ReplaceAll(f, "/", "-"), func(t *testing.T) {
			p := startAgent(t, "run", agentOptions{}, "--front", f, "--workers", "1", dir, "main:app")
			got := make(chan string, 1)
			go func() { got <- loopExchange(p.addr, "GET /slow?s=2 HTTP/1.0\r\nHost: x\r\n\r\n", nil, 1) }()
			time.Sleep(500 * time.Millisecond)
			p.cmd.Process.Signal(syscall.SIGTERM)
			if g := <-got; !strings.HasPrefix(g, "200 ") || !strings.Contains(g, `"slow"`) {
				t.Errorf("%s front: a handed-over request in flight at the stop got %s", f, g)
			}
		})
	}
}

// One client pipelines 800 requests for 250,000-byte answers (27 KB sent)
// and reads nothing: the agent's memory stays bounded under either front.
// The loop once started each request it had read, whatever was waiting for
// the client, and grew by half a GiB (each answer fits in the window the
// worker is granted, so credit never held it back).
func TestLoopFrontPipeliningClientThatReadsNothingIsBounded(t *testing.T) {
	requireRoot(t)
	dir := writeApp(t, map[string]string{"main.py": loopHostileApp})
	for _, f := range []string{"net/http", "loop"} {
		t.Run(strings.ReplaceAll(f, "/", "-"), func(t *testing.T) {
			p := startAgent(t, "run", agentOptions{}, "--front", f, "--workers", "1", dir, "main:app")
			pid := p.cmd.Process.Pid
			before, err := wsHostileStatusKiB(pid, "VmRSS")
			if err != nil {
				t.Fatal(err)
			}
			d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			}}
			conn, err := d.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte(strings.Repeat("GET /window HTTP/1.1\r\nHost: x\r\n\r\n", 800))); err != nil {
				t.Fatal(err)
			}
			most := before
			for range 25 { // 5 s, reading nothing
				time.Sleep(200 * time.Millisecond)
				if kib, err := wsHostileStatusKiB(pid, "VmRSS"); err == nil {
					most = max(most, kib)
				}
			}
			t.Logf("%s front: host-agent RSS %d MiB before, at most %d MiB", f, before>>10, most>>10)
			if grew := (most - before) >> 10; grew > 64 {
				t.Errorf("%s front: one connection that reads nothing made the agent grow by %d MiB", f, grew)
			}
		})
	}
}
