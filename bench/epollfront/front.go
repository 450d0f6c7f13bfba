// Package epollfront is a measurement prototype, not part of Ferry: an
// HTTP/1.1 front written as one hand-made epoll loop on one locked thread
// (no Go network poller, no goroutine per connection, no reader goroutine
// per session) that relays requests to ASGI workers over their data
// channels with the Ferry protocol, as the host agent does.
//
// It exists to measure what issue 17's throughput and latency targets
// would need (BENCHMARKS.md, "An event-loop front, measured"); ferry-bench
// runs it as design E with -prototype. It serves a strict subset of
// HTTP/1.1 and answers everything else with an error: requests with a
// Content-Length body up to one worker window (no chunked request bodies,
// no upgrades, no websockets), one program, no routing, no limits beyond
// the head and body sizes, no worker restarts. Responses are streamed
// with the protocol's flow control, credit going back to the worker as
// the client takes the bytes.
package epollfront

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// Options configure Run.
type Options struct {
	Listen  netip.AddrPort // an IPv4 address and port to serve HTTP on
	Workers int            // ASGI worker processes
	Python  string         // the interpreter
	Script  string         // worker.py (guest/app/asgi)
	CodeDir string         // the app's directory, the workers' working directory
	App     string         // module:attribute
	Output  io.Writer      // the workers' stdout and stderr
	Log     *slog.Logger
}

// Bounds on what one client or one worker can make the front hold.
const (
	// maxHead bounds a request's line and header fields, as the agent
	// does (431 beyond).
	maxHead = 32 << 10
	// maxUnread bounds a client's received bytes not yet relayed: a head
	// and a body of one worker window (64 KiB) fit; beyond, the front
	// stops reading the client until its request has gone.
	maxUnread = maxHead + 64<<10
	// maxUnwritten bounds a client's response bytes not yet written:
	// beyond, no pipelined request of its is started and nothing more is
	// read from it (a response in flight is bounded by its window).
	maxUnwritten = 256 << 10
	// maxBacklog bounds the frames waiting for a worker that does not
	// read: new requests are answered 503 beyond.
	maxBacklog = 4 << 20
)

// Run starts the workers and serves until ctx ends or a worker's data
// channel does.
func Run(ctx context.Context, opt Options) error {
	if !opt.Listen.Addr().Is4() {
		return fmt.Errorf("listen: %s is not an IPv4 address", opt.Listen)
	}
	l := &loop{clients: map[int]*client{}, channels: map[int]*channel{}, buf: make([]byte, 64<<10), port: uint32(opt.Listen.Port())}
	defer l.close()
	for i := 1; i <= max(opt.Workers, 1); i++ {
		p, err := startWorker(ctx, opt, i)
		if err != nil {
			return err
		}
		ch := &channel{process: p, streams: map[uint32]*client{}, next: 1}
		l.workers = append(l.workers, ch)
		l.channels[p.data] = ch
	}
	runtime.LockOSThread() // the loop's thread blocks in epoll_wait, and only there
	defer runtime.UnlockOSThread()
	if err := l.open(opt.Listen); err != nil {
		return err
	}
	// The eventfd is closed when Run returns: a wake-up already under way
	// is waited for, so that it never writes to a reused descriptor.
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woken)
		unix.Write(l.wake, []byte{0, 0, 0, 0, 0, 0, 0, 1})
	})
	defer func() {
		if !stop() {
			<-woken
		}
	}()
	return l.serve(ctx)
}

// channel is one worker's data channel, seen from the loop.
type channel struct {
	*process
	in          []byte // received bytes not yet a whole frame
	out         []byte // frames not yet written
	streams     map[uint32]*client
	next        uint32 // the next stream id (odd: the client's, SPEC.md §5.1)
	dirty       bool   // out has grown since the last write
	pollingOut  bool
	outstanding int
}

// client is one HTTP connection.
type client struct {
	fd         int
	host       []byte // the peer's address, for the request head
	port       uint32
	in         []byte // received bytes not yet a request
	out        []byte // response bytes not yet written
	dirty      bool
	readingIn  bool // registered for EPOLLIN
	pollingOut bool // registered for EPOLLOUT
	closeAfter bool // close once out is written (Connection: close, HTTP/1.0)
	refused    bool // an error answer is on its way; nothing more is read
	continued  bool // 100 Continue was sent for the request waiting in in

	// The request in flight (one at a time; pipelined ones wait in in).
	stream  uint32
	on      *channel
	chunked bool   // the response is sent with chunked transfer coding
	head    bool   // a HEAD request: the response has no body
	http10  bool   // an HTTP/1.0 request: no chunked coding, close after
	noBody  bool   // the response's body is not sent (HEAD, 204, 304)
	owed    uint32 // response credit to return once out is written
}

type loop struct {
	epoll    int
	listener int
	wake     int // an eventfd: ctx ended
	// acceptPaused: accept failed for want of descriptors; the listener
	// is watched again when a client is closed.
	acceptPaused bool
	port         uint32
	workers      []*channel
	channels     map[int]*channel
	clients      map[int]*client
	dirty        []*client
	buf          []byte
	head         message.RequestHead  // reused for each request
	response     message.ResponseHead // reused for each response
	date         []byte
	dateAt       int64
}

func (l *loop) open(addr netip.AddrPort) error {
	var err error
	if l.epoll, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	if l.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	if l.listener, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := unix.SetsockoptInt(l.listener, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := unix.Bind(l.listener, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	if err := unix.Listen(l.listener, 1024); err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	for _, fd := range []int{l.listener, l.wake} {
		if err := l.watch(unix.EPOLL_CTL_ADD, fd, true, false); err != nil {
			return err
		}
	}
	for _, ch := range l.workers {
		if err := l.watch(unix.EPOLL_CTL_ADD, ch.data, true, false); err != nil {
			return err
		}
	}
	return nil
}

func (l *loop) close() {
	for fd := range l.clients {
		unix.Close(fd)
	}
	for _, ch := range l.workers {
		unix.Close(ch.data)
		ch.kill()
	}
	for _, fd := range []int{l.listener, l.wake, l.epoll} {
		if fd > 0 {
			unix.Close(fd)
		}
	}
}

// watch registers fd (or changes its registration) for reading when in
// is set, and for writing when out is set.
func (l *loop) watch(op, fd int, in, out bool) error {
	ev := unix.EpollEvent{Fd: int32(fd)}
	if in {
		ev.Events |= unix.EPOLLIN
	}
	if out {
		ev.Events |= unix.EPOLLOUT
	}
	if err := unix.EpollCtl(l.epoll, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl of %d: %w", fd, err)
	}
	return nil
}

// serve is the loop: wait, read everything that is ready and turn it into
// output, then write each connection's output once.
func (l *loop) serve(ctx context.Context) error {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := l.wait(events)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			fd, readable, writable := int(ev.Fd), ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0, ev.Events&unix.EPOLLOUT != 0
			switch {
			case fd == l.wake:
				return ctx.Err()
			case fd == l.listener:
				l.accept()
			case l.channels[fd] != nil:
				ch := l.channels[fd]
				ch.dirty = ch.dirty || writable
				if readable {
					if err := l.readChannel(ch); err != nil {
						return err
					}
				}
			case l.clients[fd] != nil:
				c := l.clients[fd]
				if writable {
					l.mark(c)
				}
				if readable {
					l.readClient(c, ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0)
				}
			}
		}
		if err := l.flush(); err != nil {
			return err
		}
	}
}

// wait is epoll_wait(2) without the runtime's system call bookkeeping
// (RawSyscall6 instead of unix.EpollWait). With entersyscall, sysmon takes
// the P from a thread blocked longer than 20 µs and hands it back when
// the call returns, which at one connection is every request: measured
// side by side, 44–48 µs of the front's CPU per request and a p50 of
// 87–92 µs with unix.EpollWait, 33–42 µs and 72–95 µs with this. The
// runtime sees the loop as running meanwhile: the front's other
// goroutines (the workers' control sessions, the end of ctx) run when
// sysmon preempts it after 10 ms (its signal interrupts the wait, EINTR)
// or on another P.
func (l *loop) wait(events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epoll), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), ^uintptr(0), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func (l *loop) accept() {
	for {
		fd, sa, err := unix.Accept4(l.listener, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
			// The listener would stay ready and the loop spin: stop
			// watching it until a client is closed.
			if l.watch(unix.EPOLL_CTL_MOD, l.listener, false, false) == nil {
				l.acceptPaused = true
			}
			return
		}
		if err != nil {
			return // EAGAIN, or a connection gone before it was taken
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &client{fd: fd, readingIn: true}
		if in4, ok := sa.(*unix.SockaddrInet4); ok {
			c.host, c.port = []byte(netip.AddrFrom4(in4.Addr).String()), uint32(in4.Port)
		}
		if l.watch(unix.EPOLL_CTL_ADD, fd, true, false) != nil {
			unix.Close(fd)
			continue
		}
		l.clients[fd] = c
	}
}

func (l *loop) mark(c *client) {
	if !c.dirty {
		c.dirty = true
		l.dirty = append(l.dirty, c)
	}
}

// readClient reads what c sent, unless c holds as much as it may (then a
// hang-up ends it).
func (l *loop) readClient(c *client, hangup bool) {
	if !l.mayRead(c) {
		if hangup {
			l.drop(c)
		}
		return
	}
	n, err := unix.Read(c.fd, l.buf[:min(len(l.buf), maxUnread-len(c.in))])
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
		return
	}
	if n <= 0 {
		l.drop(c)
		return
	}
	c.in = append(c.in, l.buf[:n]...)
	l.mark(c) // flush starts its request and re-arms it
}

// mayRead reports whether c may send more now (see maxUnread and
// maxUnwritten).
func (l *loop) mayRead(c *client) bool {
	return !c.refused && len(c.in) < maxUnread && len(c.out) < maxUnwritten
}

// drop closes a client and resets its stream, if any.
func (l *loop) drop(c *client) {
	if c.stream != 0 {
		l.reset(c, frame.CodeCancel)
	}
	delete(l.clients, c.fd)
	unix.Close(c.fd)
	c.fd = -1
	if l.acceptPaused && l.watch(unix.EPOLL_CTL_MOD, l.listener, true, false) == nil {
		l.acceptPaused = false
	}
}

// reset abandons c's stream on its worker with a RESET of code.
func (l *loop) reset(c *client, code uint32) {
	ch := c.on
	ch.out = appendFrame(ch.out, frame.TypeReset, 0, c.stream, (&message.Reset{Code: code}).Append(nil))
	ch.dirty = true
	l.finish(c)
}

// finish forgets c's stream.
func (l *loop) finish(c *client) {
	delete(c.on.streams, c.stream)
	c.on.outstanding--
	c.stream, c.on, c.owed = 0, nil, 0
}

// fail answers c with an error status and closes it once written.
func (l *loop) fail(c *client, status int, reason string) {
	body := reason + "\n"
	c.out = fmt.Appendf(c.out, "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s", status, reason, len(body), body)
	c.closeAfter, c.refused = true, true
	c.in = nil
	l.mark(c)
}
