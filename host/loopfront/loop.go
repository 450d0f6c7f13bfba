package loopfront

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/dataplane"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Bounds on what one client or one worker can make the loop hold.
const (
	// maxHead bounds a request's line and fields, as the agent's net/http
	// server does (relay.MaxHeaderBytes); a longer head is handed over,
	// and that server answers 431.
	maxHead = 32 << 10
	// maxUnread bounds a client's received bytes not yet relayed: a head
	// and 64 KiB of body. Beyond, the loop stops reading the client
	// until the worker has taken some.
	maxUnread = maxHead + 64<<10
	// maxUnwritten: while a client's response bytes not yet written
	// reach this, the loop reads nothing more from it (a pipelining
	// client waits). It is not what bounds them: credit does (creditAt),
	// which keeps a response's unwritten bytes under creditAt plus the
	// window the host grants (initialWindow), 320 KiB.
	maxUnwritten = 256 << 10
	// creditAt: a response's credit goes back to its worker once the
	// client's output holds at most this much, so that the worker sends
	// the next window while the client takes the rest (the output stays
	// under creditAt and one window).
	creditAt = 64 << 10
	// maxBacklog bounds the frames waiting for a worker that does not
	// read: it gets no new requests beyond.
	maxBacklog = 4 << 20
	// maxQueued bounds what the loop queues toward a worker at all: a
	// worker that sends PINGs and reads none of the ACKs is cut off
	// beyond it (SPEC.md §9: a bounded write queue), as the agent's
	// sessions are.
	maxQueued = 2 * maxBacklog
	// tick is how often the loop checks its clients' time limits.
	tick = 100 * time.Millisecond
	// keepaliveInterval and keepaliveTimeout: a worker channel silent
	// for the interval is sent a PING, and closed when nothing at all
	// has come for the timeout (SPEC.md §3.2), as the agent's sessions
	// are (the same defaults).
	keepaliveInterval = mux.DefaultKeepaliveInterval
	keepaliveTimeout  = mux.DefaultKeepaliveTimeout
)

// client is one HTTP connection the loop holds.
type client struct {
	fd         int
	host       []byte // the peer's address and port, for the request head
	port       uint32
	local      []byte // the address and port it connected to
	localPort  uint32
	in         queue // received bytes not yet relayed
	hold       *hold // what the next request holds before its stream opens
	out        queue // response bytes not yet written
	dirty      bool
	readingIn  bool // registered for EPOLLIN
	pollingOut bool // registered for EPOLLOUT
	closeAfter bool // close once the response in flight is written
	// lingering: the loop has answered and shut its side of the
	// connection; what the client still sends is read and discarded
	// until it closes or the linger ends (an unread body would otherwise
	// turn the close into a reset, which can destroy the answer).
	lingering bool
	discard   int64 // bytes of an unread request body to skip
	readEOF   bool  // the client shut its writing side
	served    int   // requests started on the connection
	req       *request
	// spare is the finished request's record, reused by the next one
	// (with its head's array): requests start only at the top of the
	// loop (next), where nothing holds the old one any more.
	spare     *request
	spareHold *hold // likewise, a hold that never waited off the loop
	stalled   bool  // in loop.stalled: its hold waits for a channel with room
	// since is when the wait the client's time limit applies to began:
	// the first byte of a head, the start of an idle spell, or the last
	// write that made progress.
	since int64
}

// loop is the state of Run's thread; only that thread touches it.
type loop struct {
	f            *Front
	epoll        int
	listener     int
	epoch        time.Time // the monotonic clock's origin
	clients      map[int]*client
	channels     map[int]*channel
	sides        map[int]*side // the channels' side sessions, by the loop's end
	groups       map[*dataplane.Set]*group
	dirty        []*client
	dirtyChs     []*channel
	buf          []byte
	waitingHeads []*client            // responses whose head waits for the end of a read
	stalled      []*client            // holds waiting for a worker channel with room, oldest first
	names        []byte               // the lower-case field names of the request being parsed
	fieldName    []byte               // a response field's name in lower case (takeHead)
	chunk        [20]byte             // a chunk's size line
	parts        [][]byte             // a direct write's pieces (writeOut)
	ref          [sharedRefSize]byte  // a DATA_SHARED payload (sendData)
	head         message.RequestHead  // reused for each request
	response     message.ResponseHead // reused for each response
	date         []byte
	dateAt       int64
	check        int64 // when the time limits are next checked
	// acceptPaused: accept failed for want of descriptors; the listener
	// is watched again when a client is closed, and at each tick (the
	// descriptors may have been another part of the agent's).
	acceptPaused bool
	draining     bool
	// handoffsDrained: the net/http server has drained too (Shutdown's
	// handedOver). Until then the loop keeps the worker channels, which
	// carry that server's requests (side sessions).
	handoffsDrained bool
	quit            bool
}

func newLoop(f *Front, listener int) (*loop, error) {
	l := &loop{f: f, listener: listener, epoch: time.Now(), clients: map[int]*client{}, channels: map[int]*channel{}, sides: map[int]*side{},
		groups: map[*dataplane.Set]*group{}, buf: make([]byte, 64<<10)}
	// Fd put the listener in blocking mode: back to non-blocking.
	if err := unix.SetNonblock(l.listener, true); err != nil {
		return nil, fmt.Errorf("loopfront: %w", err)
	}
	var err error
	if l.epoll, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("loopfront: epoll: %w", err)
	}
	for _, fd := range []int{l.listener, f.wake} {
		if err := l.watch(unix.EPOLL_CTL_ADD, fd, true, false); err != nil {
			unix.Close(l.epoll)
			return nil, err
		}
	}
	return l, nil
}

// close ends every connection and channel the loop holds.
func (l *loop) close() {
	for _, cmd := range l.f.takeCommands(true) {
		cmd(l) // Forgets and adds queued before the end: no descriptor leaks
	}
	for _, c := range l.clients {
		l.drop(c)
	}
	for _, ch := range l.channels {
		l.closeChannel(ch, "the agent is stopping")
	}
	unix.Close(l.epoll)
	l.f.handoffs.Close()
}

// now is the time on the loop's monotonic clock, in nanoseconds.
func (l *loop) now() int64 { return int64(time.Since(l.epoch)) }

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
		return fmt.Errorf("loopfront: epoll_ctl of %d: %w", fd, err)
	}
	return nil
}

// restoreProcs takes back the P the loop added. Setting GOMAXPROCS
// stopped the runtime from following the cgroup's CPU limit (Go 1.25 and
// later); restoring the default resumes that, and procs is set again only
// if the default differs from it (GOMAXPROCS was set by hand). If someone
// changed GOMAXPROCS while the loop ran, theirs stands.
func restoreProcs(procs int) {
	if runtime.GOMAXPROCS(0) != procs+1 {
		return
	}
	runtime.SetDefaultGOMAXPROCS()
	if runtime.GOMAXPROCS(0) != procs {
		runtime.GOMAXPROCS(procs)
	}
}

// run is the loop: wait, read everything that is ready and turn it into
// output, then write each connection's output once.
func (l *loop) run() error {
	runtime.LockOSThread() // the loop's thread blocks in epoll_wait, and only there
	defer runtime.UnlockOSThread()
	// The runtime sees the loop as always running (epollWait), so it
	// holds a P for good: one more P keeps the agent's other goroutines
	// (the handed-over connections, the sessions with init, the admin
	// API) as many as GOMAXPROCS said. With GOMAXPROCS=1 and no extra P
	// they ran only when sysmon preempted the loop, every 10 to 20 ms:
	// websockets handed to net/http ran at 1,407 echoes a second.
	procs := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(procs + 1)
	defer restoreProcs(procs)
	events := make([]unix.EpollEvent, 256)
	for !l.quit && !(l.draining && l.handoffsDrained && l.busy() == 0) {
		timeout := -1
		switch {
		case len(l.dirty) > 0: // marked while the channels were written
			timeout = 0
		case len(l.clients) > 0 || l.acceptPaused:
			timeout = max(0, int((l.check-l.now())/int64(time.Millisecond))+1)
		}
		n, err := l.epollWait(events, timeout)
		if errors.Is(err, unix.EINTR) {
			// The runtime's preemption signal (every 10 to 20 ms: the
			// runtime sees the loop as running): the time limits are
			// still checked below.
			n, err = 0, nil
		}
		if err != nil {
			return fmt.Errorf("loopfront: epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			fd, readable, writable := int(ev.Fd), ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0, ev.Events&unix.EPOLLOUT != 0
			switch {
			case fd == l.f.wake:
				var b [8]byte
				unix.Read(l.f.wake, b[:])
				for _, cmd := range l.f.takeCommands(false) {
					cmd(l)
				}
			case fd == l.listener:
				l.accept()
			case l.channels[fd] != nil:
				ch := l.channels[fd]
				if writable {
					l.markChannel(ch)
				}
				if readable {
					l.readChannel(ch)
				}
			case l.sides[fd] != nil:
				s := l.sides[fd]
				if writable {
					l.markChannel(s.ch) // (writeChannel writes its side too)
				}
				if readable {
					l.readSide(s)
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
		if now := l.now(); now >= l.check {
			l.check = now + int64(tick)
			l.expire(now)
		}
		l.flush()
	}
	return nil
}

// epollWait is epoll_wait(2) without the runtime's system call bookkeeping
// (RawSyscall6 instead of unix.EpollWait). With entersyscall, sysmon takes
// the P from a thread blocked longer than 20 µs and hands it back when the
// call returns, which at one connection is every request (BENCHMARKS.md,
// session 16: 44–48 µs of CPU per request against 33–42 µs). The runtime
// sees the loop as running meanwhile: the agent's other goroutines run on
// its other Ps, or when sysmon preempts the loop after 10 ms (its signal
// interrupts the wait: EINTR).
func (l *loop) epollWait(events []unix.EpollEvent, timeoutMs int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epoll), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(timeoutMs), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// busy returns how many clients have a request in flight (or waiting
// for its program) or a response still to write.
func (l *loop) busy() int {
	n := 0
	for _, c := range l.clients {
		if c.req != nil || c.hold != nil || c.out.len() > 0 || (c.in.len() > 0 && !c.closeAfter) {
			n++
		}
	}
	return n
}

// drain stops accepting and closes every client once its request in
// flight is answered; run returns when none is left.
func (l *loop) drain() {
	if l.draining {
		return
	}
	l.draining = true
	unix.EpollCtl(l.epoll, unix.EPOLL_CTL_DEL, l.listener, nil)
	for _, c := range l.clients {
		// A connection closes once its request in flight is answered,
		// or at once when idle; a request read before, whole or in part,
		// is served first (start closes its connection after it, as
		// net/http's Shutdown does), within the header time limit.
		if c.req != nil || c.in.len() == 0 || c.discard > 0 {
			c.closeAfter = true
		}
		l.mark(c)
	}
}

func (l *loop) accept() {
	for !l.draining {
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
		c := &client{fd: fd, readingIn: true, since: l.now()}
		c.host, c.port = sockaddrText(sa)
		if local, err := unix.Getsockname(fd); err == nil {
			c.local, c.localPort = sockaddrText(local)
		}
		if l.watch(unix.EPOLL_CTL_ADD, fd, true, false) != nil {
			unix.Close(fd)
			continue
		}
		l.clients[fd] = c
	}
}

// sockaddrText is an IP socket address as a request head carries it.
func sockaddrText(sa unix.Sockaddr) ([]byte, uint32) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr).AppendTo(nil), uint32(a.Port)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr).Unmap().AppendTo(nil), uint32(a.Port)
	}
	return nil, 0
}

func (l *loop) markChannel(ch *channel) {
	if !ch.dirty {
		ch.dirty = true
		l.dirtyChs = append(l.dirtyChs, ch)
	}
}

// stall queues c, whose hold found no worker channel with room: the
// next channel with room for a request retries it (wakeStalled).
func (l *loop) stall(c *client) {
	if !c.stalled {
		c.stalled = true
		l.stalled = append(l.stalled, c)
	}
}

// wakeStalled retries up to n of the stalled holds on set's program
// (any program's when set is nil), oldest first, when a worker channel may
// have room again: a stream ended, a backlog was written, a channel came.
// Those that find none stall again, at the back; each tick retries them
// all as well. It also forgets the clients that no longer wait.
func (l *loop) wakeStalled(set *dataplane.Set, n int) {
	kept := l.stalled[:0]
	for _, c := range l.stalled {
		hd := c.hold
		switch {
		case c.fd < 0 || hd == nil || hd.waiting:
			c.stalled = false
		case n > 0 && (set == nil || hd.inst.Workers() == set):
			c.stalled = false
			l.mark(c)
			n--
		default:
			kept = append(kept, c)
		}
	}
	clear(l.stalled[len(kept):])
	l.stalled = kept
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
	if c.lingering {
		if n, err := unix.Read(c.fd, l.buf); n == 0 || (err != nil && err != unix.EAGAIN && err != unix.EINTR) {
			l.drop(c)
		}
		return
	}
	if !l.mayRead(c) {
		if hangup {
			l.drop(c)
		}
		return
	}
	// Heads are read into the loop's buffer and copied: a client then
	// keeps an array as big as what it sent (4 KiB for most), not the
	// 64 KiB of a read, for as long as it stays connected. A request
	// body is read straight into the client's queue.
	fresh := c.in.len() == 0 && c.req == nil
	viaBuf := c.req == nil || c.req.bodyLeft == 0
	room := min(64<<10, maxUnread-c.in.len())
	into := l.buf[:room]
	if !viaBuf {
		into = c.in.tail(room)
	}
	n, err := unix.Read(c.fd, into)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
		return
	}
	if n == 0 && err == nil && !hangup {
		if r := c.req; r != nil && r.bodyLeft > 0 && c.in.len() == 0 && !r.headSent {
			// The client shut its side in the middle of the body: a
			// body shorter than its Content-Length, 400, as net/http
			// answers it.
			c.readEOF = true
			l.reset(c, codeCancel)
			c.closeAfter = true
			l.answerError(c, 400, "malformed or incomplete request body", "err", "unexpected EOF")
			return
		}
	}
	if n <= 0 {
		l.drop(c)
		return
	}
	if fresh {
		c.since = l.now() // a head starts: the header time limit runs
	}
	if r := c.req; r != nil && r.bodyLeft > 0 {
		r.bodyAt = l.now() // the body moves
	}
	if viaBuf {
		c.in.write(into[:n])
	} else {
		c.in.commit(n)
	}
	l.mark(c) // flush relays it and re-arms c
}

// mayRead reports whether c may send more now (see maxUnread and
// maxUnwritten).
func (l *loop) mayRead(c *client) bool {
	return c.lingering || (!c.readEOF && c.in.len() < maxUnread && c.out.len() < maxUnwritten)
}

// drop closes a client and ends its request, if any.
func (l *loop) drop(c *client) {
	if c.fd < 0 {
		return
	}
	if c.req != nil {
		l.abandon(c, codeCancel, statusClientClosed)
	}
	l.release(c)
	delete(l.clients, c.fd)
	unix.Close(c.fd)
	c.fd = -1
	if l.acceptPaused && l.watch(unix.EPOLL_CTL_MOD, l.listener, true, false) == nil {
		l.acceptPaused = false
	}
}

// handOver gives c, idle and with nothing left to write, to the net/http
// server, with what it sent that the loop has not relayed.
func (l *loop) handOver(c *client) {
	l.f.log.Debug("a connection goes to the net/http server", "requests_served_before", c.served, "bytes_read", c.in.len())
	l.release(c)
	unix.EpollCtl(l.epoll, unix.EPOLL_CTL_DEL, c.fd, nil)
	delete(l.clients, c.fd)
	fd := c.fd
	c.fd = -1
	l.f.handoffs.handOver(fd, c.in.bytes())
	c.in = queue{}
	if l.acceptPaused && l.watch(unix.EPOLL_CTL_MOD, l.listener, true, false) == nil {
		l.acceptPaused = false
	}
}

// lingerTime is how long a connection the loop closes after answering is
// read and discarded from before it is closed: net/http's wait for the
// same reason (rstAvoidanceDelay).
const lingerTime = 500 * time.Millisecond

// linger shuts the loop's side of c, answered, and reads what c still
// sends until c closes or lingerTime has passed.
func (l *loop) linger(c *client) {
	if c.readEOF || unix.Shutdown(c.fd, unix.SHUT_WR) != nil {
		l.drop(c)
		return
	}
	c.lingering, c.since, c.in = true, l.now(), queue{}
	c.readingIn, c.pollingOut = true, false
	l.watch(unix.EPOLL_CTL_MOD, c.fd, true, false)
}

// expire applies the listener's time limits (front.ConnLimits) and the
// programs' (resources.seconds) to every client.
func (l *loop) expire(now int64) {
	lim := l.f.opt.Limits
	for _, ch := range l.channels {
		ch.idle()
		l.keepalive(ch, now)
	}
	for _, c := range l.clients {
		r := c.req
		if r == nil {
			// Between requests, a client keeps no big array. Here, at
			// most once a tick, and not at each request's end, so that
			// a client sending one upload after another reuses its
			// arrays instead of growing new ones each time.
			c.in.release()
			c.out.release()
		}
		switch {
		case c.lingering:
			if now-c.since >= int64(lingerTime) {
				l.drop(c)
			}
		case r != nil && r.deadline > 0 && now >= r.deadline:
			l.timedOut(c)
		case c.out.len() > 0 && now-c.since >= int64(lim.Send):
			l.drop(c) // a client that stopped reading
		case r != nil && r.bodyLeft > 0 && r.window > 0 && c.in.len() == 0 && now-r.bodyAt >= int64(lim.Body):
			l.bodyTimedOut(c) // waiting for the client, not for the app
		case r == nil && c.discard > 0 && now-c.since >= int64(lim.Body):
			l.drop(c) // the rest of an unread body never came
		case c.hold != nil:
			if !c.hold.waiting {
				l.mark(c) // a worker channel may have come
			}
		case r == nil && (c.in.len() > 0 || c.served == 0) && now-c.since >= int64(lim.Header):
			l.drop(c) // as net/http does past its ReadHeaderTimeout: no answer
		case r == nil && c.in.len() == 0 && c.out.len() == 0 && now-c.since >= int64(lim.Keepalive):
			l.drop(c)
		}
	}
	if len(l.stalled) > 0 {
		l.wakeStalled(nil, 0) // forgets the clients gone meanwhile
	}
	if l.acceptPaused && !l.draining && l.watch(unix.EPOLL_CTL_MOD, l.listener, true, false) == nil {
		l.acceptPaused = false // accept tries again (and pauses again if it must)
	}
}

// flush writes each client's and then each worker's pending bytes once.
func (l *loop) flush() {
	for i := 0; i < len(l.dirty); i++ { // next may mark a client again
		c := l.dirty[i]
		c.dirty = false
		if c.fd < 0 {
			continue
		}
		if c.out.len() > 0 {
			n, err := unix.Write(c.fd, c.out.bytes())
			if err != nil && err != unix.EAGAIN {
				l.drop(c)
				continue
			}
			if n > 0 {
				c.since = l.now()
			}
			c.out.consume(max(n, 0))
		}
		if c.lingering {
			continue
		}
		if c.out.len() == 0 && c.req == nil && c.hold == nil && c.closeAfter {
			l.linger(c)
			continue
		}
		if c.req != nil {
			l.progress(c) // body to the worker, credit back to it
		} else {
			l.next(c) // the one place a request starts
		}
		if c.fd < 0 {
			continue // handed over, or dropped
		}
		if in, out := l.mayRead(c), c.out.len() > 0; in != c.readingIn || out != c.pollingOut {
			c.readingIn, c.pollingOut = in, out
			l.watch(unix.EPOLL_CTL_MOD, c.fd, in, out)
		}
	}
	l.dirty = l.dirty[:0]
	for i := 0; i < len(l.dirtyChs); i++ { // writeChannel may mark a channel again (closeSide)
		ch := l.dirtyChs[i]
		ch.dirty = false
		l.writeChannel(ch)
	}
	l.dirtyChs = l.dirtyChs[:0]
}
