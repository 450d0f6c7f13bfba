package loopfront

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A head whose lines end in bare LF, which net/http accepts (textproto
// reads lines up to '\n'), never holds "\r\n\r\n": the loop hands it to
// the net/http server at once (it once waited for the header time limit
// and dropped the client unanswered).
func TestBareLFHeadIsHandedOver(t *testing.T) {
	clientEnd, peer := socketPair(t)
	defer unix.Close(peer)
	f := &Front{log: slog.New(slog.DiscardHandler), handoffs: newHandoffListener()}
	defer f.handoffs.Close()
	l := &loop{f: f, epoll: -1, clients: map[int]*client{}}
	c := &client{fd: clientEnd}
	l.clients[c.fd] = c
	c.in.write([]byte("GET / HTTP/1.1\nHost: x\n\n"))
	l.next(c)
	if c.fd >= 0 {
		unix.Close(c.fd)
		t.Fatalf("a whole bare-LF head (net/http serves it) is neither served nor handed over: the client waits %v for nothing", 10*time.Second)
	}
	conn, err := f.handoffs.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}

// net/http takes the bare-LF head the loop leaves hanging.
func TestNetHTTPReadsBareLFHead(t *testing.T) {
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\nHost: x\n\n")))
	if err != nil || req.Host != "x" {
		t.Fatalf("net/http: %v", err)
	}
}

// A connection handed over just as the net/http server closes its
// listener (the agent drains) gets a 503 it can retry on, not a close
// without an answer.
func TestHandOverAfterTheServerStoppedAnswers503(t *testing.T) {
	clientEnd, peer := socketPair(t)
	h := newHandoffListener()
	h.Close()
	h.handOver(clientEnd, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f := os.NewFile(uintptr(peer), "peer")
	conn, err := net.FileConn(f)
	f.Close() // (conn holds a duplicate)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer on a connection handed over as the server stopped: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close || err != nil || !strings.Contains(string(body), "stopping") {
		t.Fatalf("got %s, close %v, body %q (%v); want a 503 that closes the connection", resp.Status, resp.Close, body, err)
	}
}
