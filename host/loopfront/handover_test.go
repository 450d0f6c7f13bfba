package loopfront

import (
	"bufio"
	"log/slog"
	"net/http"
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
