package loopfront

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/dataplane"
	"github.com/ferry-vm/ferry/host/relay"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// What the host announces on a worker's data channel, as the agent's
// sessions do (protocol/SPEC.md §11).
const (
	maxFrameSize  = dataplane.WorkerMaxFrame
	initialWindow = 256 << 10
	// maxStreamID is the last odd stream id; a channel that used it up
	// takes no more requests.
	maxStreamID = 1<<31 - 1
)

// channel is one worker's data channel, past the HELLO exchange.
type channel struct {
	fd         int
	set        *dataplane.Set
	wc         contract.WorkerChannel
	peer       message.Hello // the worker's HELLO
	in         queue         // received bytes not yet a whole frame
	out        queue         // frames not yet written
	streams    map[uint32]*client
	next       uint32 // the next stream id (odd: the host's, SPEC.md §5.1)
	dirty      bool   // out has grown since the last write
	pollingOut bool
	goingAway  bool // GOAWAY received, or ids used up: no new requests
	// readingPaused: the side session has a backlog to take before the
	// loop reads on (channelFrames).
	readingPaused bool
	outstanding   int           // streams open on it: the loop's and its side session's
	side          *side         // the net/http front's session, relayed (side.go)
	shared        *sharedBuffer // big bodies, both ways, on unix channels (shared.go)
	// lastRecv is when the worker last sent anything (the loop's clock,
	// l.now); pinged, that a keepalive PING has gone unanswered since
	// pingedAt (keepalive).
	lastRecv int64
	pinged   bool
	pingedAt int64
}

// group is the channels of one VM's workers.
type group struct {
	byWorker map[uint32]*channel // the newest channel of each worker
}

// addChannel takes a greeted channel into the loop; a newer channel of
// the same worker (it was restarted) replaces the old one.
func (l *loop) addChannel(set *dataplane.Set, wc contract.WorkerChannel, fd int, peer message.Hello, shared *sharedBuffer) {
	g := l.groups[set]
	if g == nil {
		g = &group{byWorker: map[uint32]*channel{}}
		l.groups[set] = g
	}
	if old := g.byWorker[wc.Worker]; old != nil {
		if old.wc.Start > wc.Start {
			unix.Close(fd) // stale
			shared.close()
			return
		}
		l.goAway(old) // dead or dying: its streams end with it
	}
	ch := &channel{fd: fd, set: set, wc: wc, peer: peer, shared: shared, streams: map[uint32]*client{}, next: 1, lastRecv: l.now()}
	if err := l.watch(unix.EPOLL_CTL_ADD, fd, true, false); err != nil {
		unix.Close(fd)
		shared.close()
		l.f.log.Warn("worker channel: not watched", "worker", wc.Worker, "err", err)
		return
	}
	g.byWorker[wc.Worker] = ch
	l.channels[fd] = ch
	if far := l.openSide(ch); far != nil {
		set.Join(wc, far) // (it greets the loop's end from a goroutine of its own)
	}
	l.publish(set)
	l.wakeStalled(set, len(l.stalled)) // waiting for a channel: it may be this one
}

// goAway takes no more requests to ch (its worker said GOAWAY, is
// replaced, or ch used up its stream ids): its open streams finish.
func (l *loop) goAway(ch *channel) {
	ch.goingAway = true
	l.publish(ch.set)
	if ch.side != nil {
		l.sideGoAway(ch.side)
	}
}

// publish tells Live how many of set's workers have a live channel.
func (l *loop) publish(set *dataplane.Set) {
	n := 0
	if g := l.groups[set]; g != nil {
		for _, ch := range g.byWorker {
			if !ch.goingAway {
				n++
			}
		}
	}
	l.f.setLive(set, n)
}

// forgetSet closes every channel of set: its VM is stopping.
func (l *loop) forgetSet(set *dataplane.Set) {
	for _, ch := range l.channels {
		if ch.set == set {
			l.closeChannel(ch, "the VM is stopping")
		}
	}
	delete(l.groups, set)
	l.f.setLive(set, 0)
}

// pick returns the live channel of set's workers with the fewest requests
// in flight that can take one more, or nil.
func (l *loop) pick(set *dataplane.Set) *channel {
	g := l.groups[set]
	if g == nil {
		return nil
	}
	var best *channel
	for _, ch := range g.byWorker {
		if ch.goingAway || ch.outstanding >= int(ch.peer.MaxStreams) || ch.out.len() >= maxBacklog {
			continue
		}
		if best == nil || ch.outstanding < best.outstanding || (ch.outstanding == best.outstanding && ch.wc.Worker < best.wc.Worker) {
			best = ch
		}
	}
	return best
}

// closeChannel closes ch: its requests fail (502 unless their response
// has started; then their connection closes, the response cut short).
func (l *loop) closeChannel(ch *channel, why string) {
	if ch.fd < 0 {
		return
	}
	for _, c := range ch.streams {
		l.failed(c, frame.CodeInternal, why)
	}
	l.closeSide(ch)
	delete(l.channels, ch.fd)
	unix.Close(ch.fd)
	ch.fd = -1
	ch.shared.close()
	if g := l.groups[ch.set]; g != nil && g.byWorker[ch.wc.Worker] == ch {
		delete(g.byWorker, ch.wc.Worker)
	}
	l.publish(ch.set)
}

// readChannel reads what a worker sent and handles each whole frame.
func (l *loop) readChannel(ch *channel) {
	room := 64 << 10
	if p := ch.in.bytes(); len(p) >= frame.HeaderSize {
		// The rest of a big frame goes in at once, once its header is
		// known to be valid (SPEC.md §2: no allocation by a length not
		// yet checked; a header can wait here unchecked while reading
		// is paused, and a hang-up is read all the same).
		if fh := frame.ParseHeader(p); fh.Validate(maxFrameSize) == nil {
			room = max(room, frame.HeaderSize+int(fh.Length)-len(p))
		}
	}
	n, err := unix.Read(ch.fd, ch.in.tail(room))
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	if n <= 0 {
		l.closeChannel(ch, "the worker's data channel ended")
		return
	}
	ch.in.commit(n)
	ch.lastRecv, ch.pinged = l.now(), false // any frame is a sign of life
	l.channelFrames(ch)
}

// keepalive sends ch a PING when its worker has sent nothing for
// keepaliveInterval, and closes ch when the PING has had no answer (nor
// anything else) for the rest of keepaliveTimeout: a worker whose event
// loop is stuck, or a VM that froze, would otherwise hold its clients
// forever. The loop ticks only while it has clients, so silence is
// judged from the PING, not from the last frame: a channel idle for an
// hour is pinged at the next tick, not closed; nor is one the loop has
// stopped reading (readingPaused). Its streams fail as when
// the worker dies; the worker keeps serving through init (SPEC.md §11).
func (l *loop) keepalive(ch *channel, now int64) {
	switch {
	case ch.fd < 0:
	case ch.readingPaused:
		// The loop itself is not reading the channel (its side session
		// lags): the worker's answers wait unread, and are not silence.
		ch.lastRecv, ch.pinged = now, false
	case ch.pinged && now-ch.pingedAt >= int64(keepaliveTimeout-keepaliveInterval):
		l.f.log.Warn("worker channel: no answer to PING; closed", "worker", ch.wc.Worker,
			"silent", time.Duration(now-ch.lastRecv).Round(time.Second))
		l.closeChannel(ch, "the worker stopped answering")
	case !ch.pinged && now-ch.lastRecv >= int64(keepaliveInterval):
		ch.pinged, ch.pingedAt = true, now
		ch.out.sendFrame(frame.TypePing, 0, 0, make([]byte, 8))
		l.markChannel(ch)
	}
}

// channelFrames handles each whole frame a worker sent, until the side
// session has a backlog to take first (the channel is then read no more:
// readingPaused, until writeChannel finds the backlog taken).
func (l *loop) channelFrames(ch *channel) {
	p := ch.in.bytes()
	for len(p) >= frame.HeaderSize && ch.fd >= 0 {
		fh := frame.ParseHeader(p)
		if err := fh.Validate(maxFrameSize); err != nil {
			l.f.log.Warn("worker channel: bad frame; closed", "worker", ch.wc.Worker, "err", err)
			l.closeChannel(ch, "the worker broke the protocol")
			return
		}
		if s := ch.side; s != nil && s.out.len() >= maxBacklog {
			// The session's reader lags: what the worker sends it is
			// bounded by its streams' windows, but up to a quarter MiB
			// each; the loop reads on once the session has caught up.
			if !ch.readingPaused {
				ch.readingPaused = true
				if !l.rewatch(ch) {
					return
				}
			}
			break
		}
		if len(p) < frame.HeaderSize+int(fh.Length) {
			break
		}
		raw := p[:frame.HeaderSize+int(fh.Length)]
		if fh.Type == frame.TypeDataShared {
			if err := l.sharedFrame(ch, fh, raw[frame.HeaderSize:]); err != nil {
				l.f.log.Warn("worker channel: protocol error; closed", "worker", ch.wc.Worker, "err", err)
				l.closeChannel(ch, "the worker broke the protocol")
				return
			}
			p = p[len(raw):]
			continue
		}
		if fh.Type != frame.TypeRequest && !fh.Type.ConnectionLevel() && l.workerToSide(ch, fh, raw) {
			p = p[len(raw):]
			continue
		}
		if err := l.frame(ch, fh, raw[frame.HeaderSize:]); err != nil {
			l.f.log.Warn("worker channel: protocol error; closed", "worker", ch.wc.Worker, "err", err)
			l.closeChannel(ch, "the worker broke the protocol")
			return
		}
		p = p[frame.HeaderSize+int(fh.Length):]
	}
	if ch.fd >= 0 {
		ch.in.consume(ch.in.len() - len(p))
	}
	l.sendHeads()
}

// sharedFrame handles a DATA_SHARED frame: the body bytes it names in
// the shared buffer are handled as a DATA frame's payload (written to
// the client, or copied into its queue, or relayed to the side session
// as a DATA frame), then released to the worker.
func (l *loop) sharedFrame(ch *channel, fh frame.Header, payload []byte) error {
	if ch.shared == nil {
		return errors.New("DATA_SHARED on a channel without a shared buffer")
	}
	body, end, err := ch.shared.take(payload)
	if err != nil {
		return err
	}
	defer ch.shared.release(end)
	data := frame.Header{Type: frame.TypeData, Flags: fh.Flags, StreamID: fh.StreamID, Length: uint32(len(body))}
	if ch.side != nil && ch.side.streams[fh.StreamID] != nil {
		raw := frame.AppendHeader(make([]byte, 0, frame.HeaderSize+len(body)), data)
		l.workerToSide(ch, data, append(raw, body...))
		return nil
	}
	return l.frame(ch, data, body)
}

// frame handles one frame from a worker; an error is a connection error
// (SPEC.md §3.4).
func (l *loop) frame(ch *channel, fh frame.Header, payload []byte) error {
	switch fh.Type {
	case frame.TypePing:
		if !fh.Has(frame.FlagAck) {
			if ch.out.len() >= maxQueued {
				return fmt.Errorf("PINGs while %d bytes wait for the worker to read them", ch.out.len())
			}
			ch.out.sendFrame(frame.TypePing, frame.FlagAck, 0, payload)
			l.markChannel(ch)
		}
		return nil
	case frame.TypeGoAway:
		var g message.GoAway
		if err := g.Unmarshal(payload); err != nil {
			return fmt.Errorf("GOAWAY: %w", err)
		}
		l.goAway(ch) // its streams finish; it gets no more
		return nil
	case frame.TypeLog:
		return nil // a worker's output goes through init
	case frame.TypeRequest, frame.TypeHello, frame.TypeConfig, frame.TypeConfigResult:
		return fmt.Errorf("unexpected %s frame", fh.Type)
	}
	c := ch.streams[fh.StreamID]
	if c == nil || c.req == nil || c.req.on != ch {
		if fh.StreamID%2 == 0 || fh.StreamID >= ch.next {
			// Only the host opens streams here (odd ids, in order):
			// SPEC.md §3.4 makes a frame on one never opened a
			// connection error.
			return fmt.Errorf("%s on stream %d, which was never opened", fh.Type, fh.StreamID)
		}
		// A stream the loop (or its side session) has ended: RESET and
		// late frames pass, websocket ones included.
		return nil
	}
	if fh.Type == frame.TypeWSMessage || fh.Type == frame.TypeWSClose {
		return fmt.Errorf("%s on an HTTP stream", fh.Type)
	}
	r := c.req
	switch fh.Type {
	case frame.TypeWindowUpdate:
		if len(payload) != 4 {
			return errors.New("WINDOW_UPDATE payload is not 4 bytes")
		}
		n := int64(payload[0])<<24 | int64(payload[1])<<16 | int64(payload[2])<<8 | int64(payload[3])
		if n == 0 || r.window+n > 1<<31-1 {
			return errors.New("bad WINDOW_UPDATE increment")
		}
		r.window += n
		l.mark(c)
		return nil
	case frame.TypeResponse:
		if r.gotHead {
			return errors.New("a second RESPONSE on a stream")
		}
		r.gotHead = true
		if err := l.response.Unmarshal(payload); err != nil {
			l.reset(c, frame.CodeProtocol)
			l.answerError(c, 502, "the program sent an invalid response", "err", err)
			return nil
		}
		if err := relay.CheckResponseHead(&l.response); err != nil {
			l.reset(c, frame.CodeProtocol)
			l.answerError(c, 502, "the program sent an invalid response", "err", err)
			return nil
		}
		l.takeHead(c, &l.response)
		if fh.Has(frame.FlagFin) {
			l.complete(c)
		}
		return nil
	case frame.TypeData:
		if !r.gotHead || r.finished {
			return errors.New("DATA before the response head, or after FIN")
		}
		if fh.Has(frame.FlagCompressed) {
			return errors.New("compressed DATA: no compression was announced")
		}
		if r.received+int64(len(payload)) > int64(initialWindow)+r.credited {
			return errors.New("DATA beyond the stream's window")
		}
		r.received += int64(len(payload))
		l.body(c, payload)
		if fh.Has(frame.FlagFin) && !r.finished { // body may have ended it (more than its length)
			l.complete(c)
		}
		return nil
	case frame.TypeEnd:
		if !r.gotHead {
			return errors.New("END before the response head")
		}
		l.complete(c)
		return nil
	case frame.TypeReset:
		var m message.Reset
		if err := m.Unmarshal(payload); err != nil {
			return fmt.Errorf("RESET: %w", err)
		}
		l.failed(c, m.Code, string(m.Message))
		return nil
	}
	return fmt.Errorf("unknown frame type %s", fh.Type)
}

// reset abandons c's stream on its worker with a RESET of code.
func (l *loop) reset(c *client, code uint32) {
	r := c.req
	if r.reset || r.on.fd < 0 {
		return
	}
	r.reset = true
	ch := r.on
	ch.out.sendFrame(frame.TypeReset, 0, r.stream, (&message.Reset{Code: code}).Append(nil))
	l.markChannel(ch)
}

// writeChannel writes ch's pending frames.
func (l *loop) writeChannel(ch *channel) {
	if ch.fd < 0 {
		return
	}
	if ch.out.len() > 0 {
		n, err := unix.Write(ch.fd, ch.out.bytes())
		if err != nil && err != unix.EAGAIN {
			l.closeChannel(ch, "writing to the worker failed")
			return
		}
		backlogged := ch.out.len() >= maxBacklog
		ch.out.consume(max(n, 0))
		if ch.out.len() >= maxQueued {
			// Past the backlog, what still comes for the worker is
			// control frames (credit, resets, PING ACKs) that a worker
			// reading nothing makes without bound.
			l.closeChannel(ch, "the worker reads nothing of what it is sent")
			return
		}
		if backlogged && ch.out.len() < maxBacklog {
			l.wakeStalled(ch.set, len(l.stalled)) // the channel takes requests again
			if ch.side != nil {
				l.pauseSide(ch.side) // (resumes it)
			}
		}
		if n > 0 && ch.out.len() < creditAt {
			for _, c := range ch.streams {
				if c.req != nil && c.req.bodyLeft > 0 {
					l.mark(c) // its body may go on
				}
			}
		}
	}
	if want := ch.out.len() > 0; want != ch.pollingOut {
		ch.pollingOut = want
		if !l.rewatch(ch) {
			return
		}
	}
	if ch.side != nil {
		l.writeSide(ch.side)
	}
	if ch.readingPaused && ch.fd >= 0 && (ch.side == nil || ch.side.out.len() < maxBacklog) {
		// The side session caught up (or is gone): the frames already
		// read go on, then the channel is read again.
		ch.readingPaused = false
		if !l.rewatch(ch) {
			return
		}
		l.channelFrames(ch)
	}
}

// rewatch tells epoll what the loop waits for on ch now: its bytes
// unless readingPaused, room to write while pollingOut. It reports false,
// the channel closed, if epoll refuses.
func (l *loop) rewatch(ch *channel) bool {
	if err := l.watch(unix.EPOLL_CTL_MOD, ch.fd, !ch.readingPaused, ch.pollingOut); err != nil {
		l.closeChannel(ch, "the loop lost the channel")
		return false
	}
	return true
}

// handshake sends the host's HELLO on a blocking descriptor, with
// sharedFd unless it is -1, and reads the worker's, which must be the
// first frame (SPEC.md §3.1), all of it by deadline.
func handshake(fd int, agent string, deadline time.Time, sharedFd int) (message.Hello, error) {
	ours := message.Hello{Version: 1, Role: 1, MaxFrameSize: maxFrameSize, InitialWindow: initialWindow, MaxStreams: 1, Agent: []byte(agent)}
	hello := appendFrame(nil, frame.TypeHello, 0, 0, ours.Append(nil))
	var rights []byte
	if sharedFd >= 0 {
		rights = unix.UnixRights(sharedFd)
	}
	// The shared buffer's descriptor, if any, goes with the HELLO's bytes
	// (SPEC.md §11.1).
	if n, err := unix.SendmsgN(fd, hello, rights, nil, 0); err != nil || n != len(hello) {
		return message.Hello{}, fmt.Errorf("sending HELLO: %d of %d bytes written: %v", n, len(hello), err)
	}
	h, payload, err := frame.NewReader(&readerOf{fd: fd, deadline: deadline}, maxFrameSize).ReadFrame()
	if err != nil {
		return message.Hello{}, fmt.Errorf("reading HELLO: %w", err)
	}
	var peer message.Hello
	if h.Type != frame.TypeHello {
		return peer, fmt.Errorf("first frame is %s, not HELLO", h.Type)
	}
	if err := peer.Unmarshal(append([]byte(nil), payload...)); err != nil {
		return peer, fmt.Errorf("HELLO: %w", err)
	}
	if peer.Version != 1 || peer.Role != 2 || peer.InitialWindow == 0 || peer.InitialWindow > 1<<31-1 ||
		peer.MaxFrameSize < frame.MinMaxSize || peer.MaxFrameSize > frame.MaxMaxSize || peer.MaxStreams == 0 {
		return peer, fmt.Errorf("unexpected HELLO %+v", peer)
	}
	return peer, nil
}

// readerOf reads a blocking descriptor without taking it over, each
// read waiting no later than deadline (SO_RCVTIMEO set to what is left),
// so that a worker sending its HELLO a byte at a time does not hold the
// greeting past it.
type readerOf struct {
	fd       int
	deadline time.Time
}

func (r *readerOf) Read(p []byte) (int, error) {
	for {
		left := time.Until(r.deadline)
		if left <= 0 {
			return 0, errors.New("the worker's HELLO did not come in time")
		}
		tv := unix.NsecToTimeval(max(left.Nanoseconds(), int64(time.Millisecond)))
		if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return 0, err
		}
		n, err := unix.Read(r.fd, p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n == 0 && err == nil {
			return 0, errors.New("the worker closed its data channel")
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// idle frees the queues' big arrays when no request is on the channel:
// a worker that took a 10 MiB upload or sent big frames keeps no big
// buffer while it waits. The loop calls it once a tick (expire), so that
// requests one after another reuse the arrays.
func (ch *channel) idle() {
	if ch.outstanding == 0 {
		ch.in.release()
		ch.out.release()
		if s := ch.side; s != nil {
			s.in.release()
			s.out.release()
		}
	}
}
