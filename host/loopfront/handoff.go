package loopfront

import (
	"bytes"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// handoffListener is the listener the agent's net/http server serves: its
// connections are those the loop handed over.
type handoffListener struct {
	mu     sync.Mutex
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoffListener() *handoffListener {
	return &handoffListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (h *handoffListener) setAddr(a net.Addr) {
	h.mu.Lock()
	h.addr = a
	h.mu.Unlock()
}

// Accept implements net.Listener.
func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: connections handed over afterwards are
// closed.
func (h *handoffListener) Close() error {
	h.once.Do(func() { close(h.closed) })
	return nil
}

// Addr implements net.Listener.
func (h *handoffListener) Addr() net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.addr
}

// handOver gives the server a client's connection, fd (which it takes
// over), with the bytes already read from it. It does not block the loop:
// the server's accept loop takes the connection in a goroutine of its own.
func (h *handoffListener) handOver(fd int, read []byte) {
	f := os.NewFile(uintptr(fd), "client")
	conn, err := net.FileConn(f) // a duplicate, in the runtime's poller
	f.Close()
	if err != nil {
		return // the client is dropped: nothing was answered yet
	}
	// A copy: read is in the loop's array for the client (64 KiB and
	// more), which the connection would otherwise keep for its life.
	c := &prefixConn{Conn: conn, prefix: bytes.Clone(read)}
	go func() {
		select {
		case h.conns <- c:
		case <-h.closed:
			refuseStopping(c)
		}
	}()
}

// stoppingBody is the body of the answer a connection handed over as the
// server stops gets: the server closed its listener (the agent drains)
// before it took the connection.
const stoppingBody = `{"error":"the agent is stopping; try again later"}` + "\n"

// refuseStopping answers c 503 and closes it, after reading what the
// client still sends for a while, as net/http does before it closes a
// connection: closing with unread input would reset the connection and
// could destroy the answer.
func refuseStopping(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(lingerTime))
	answer := "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(stoppingBody)) + "\r\n\r\n" + stoppingBody
	if _, err := io.WriteString(c, answer); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, c)
}

// prefixConn is a connection whose first bytes were read by the loop.
type prefixConn struct {
	net.Conn
	mu     sync.Mutex
	prefix []byte
}

// Read returns the bytes the loop read first, then the connection's.
func (c *prefixConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil // (frees the array)
		}
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// CloseWrite shuts the connection's writing side: net/http does before
// it closes a connection whose client may still be sending, so that the
// close does not turn into a reset that destroys its answer.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NetConn returns the TCP connection (the relay reads its state).
func (c *prefixConn) NetConn() net.Conn { return c.Conn }
