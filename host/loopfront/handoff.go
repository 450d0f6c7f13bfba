package loopfront

import (
	"net"
	"os"
	"sync"
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
	c := &prefixConn{Conn: conn, prefix: read}
	go func() {
		select {
		case h.conns <- c:
		case <-h.closed:
			c.Close()
		}
	}()
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
