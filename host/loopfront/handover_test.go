package loopfront

import (
	"bufio"
	"io"
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
	l := newTestLoop(t)
	f := l.f
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

// A bare-LF request pipelined behind a response not yet written is handed
// over once that response is: the bare line feed found while the loop
// could not hand the connection over is remembered (the search does not
// look at those bytes again).
func TestBareLFBehindAnUnwrittenResponseIsHandedOver(t *testing.T) {
	clientEnd, peer := socketPair(t)
	defer unix.Close(peer)
	l := newTestLoop(t)
	f := l.f
	c := &client{fd: clientEnd, served: 1}
	l.clients[c.fd] = c
	c.out.write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c.in.write([]byte("POST / HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello"))
	l.next(c)
	if c.fd < 0 {
		t.Fatal("handed over while a response was still to be written")
	}
	c.out.consume(c.out.len())
	l.next(c)
	if c.fd >= 0 {
		unix.Close(c.fd)
		t.Fatal("a whole bare-LF request waits for a head end that never comes once the response before it is written")
	}
	conn, err := f.handoffs.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}

// The drain serves a request the loop has already read (here in the same
// pass as the drain's command), then closes its connection, as net/http's
// Shutdown does; it does not close it unanswered.
func TestDrainServesARequestAlreadyRead(t *testing.T) {
	clientEnd, peer := socketPair(t)
	defer unix.Close(peer)
	l := newTestLoop(t)
	idle := &client{fd: -2, served: 1} // (never written: closed before)
	c := &client{fd: clientEnd, served: 1}
	l.clients[c.fd] = c
	c.in.write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	l.mark(c)
	l.clients[idle.fd] = idle
	l.drain()
	if c.closeAfter || !idle.closeAfter {
		t.Fatalf("the drain closes after its answer (closeAfter) a connection with a request read: %v; an idle one: %v", c.closeAfter, idle.closeAfter)
	}
	if l.busy() != 1 {
		t.Fatalf("busy %d: the drain must wait for the request read", l.busy())
	}
}

// A client keeps no 64 KiB array for the few bytes of its head, in one
// read or several: it reads into the loop's buffer and keeps a copy
// (thousands of idle keep-alive connections each held one).
func TestIdleClientKeepsNoBigArray(t *testing.T) {
	clientEnd, peer := socketPair(t)
	defer unix.Close(peer)
	l := newTestLoop(t)
	c := &client{fd: clientEnd, readingIn: true, served: 1}
	l.clients[c.fd] = c
	for _, part := range []string{"GET / HTTP/1.1\r\n", "Host: x\r\n"} { // a head in two reads
		unix.Write(peer, []byte(part))
		l.readClient(c, false)
	}
	if c.in.len() != 25 || cap(c.in.b) > 4<<10 {
		t.Fatalf("after reads of 16 and 9 bytes: %d bytes waiting in an array of %d KiB", c.in.len(), cap(c.in.b)>>10)
	}
}
