package loopfront

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// A side session is how the requests the loop hands to the net/http
// server still reach an ASGI worker directly (websockets above all): the
// loop holds each worker's one data channel, so it makes a socket pair
// next to it, gives one end to the VM's dataplane.Set as if it were a
// channel of its own (the Set runs an ordinary session of the agent on
// it, and the net/http front picks it as it would a worker's), and
// relays that session's streams onto the worker's channel itself.
//
// The relay rewrites stream ids only: the session's stream n becomes the
// channel's next free id, and the worker's frames on that id go back as
// n. Flow control passes through unchanged, so both ends must agree with
// the worker on windows and frame sizes: the session's HELLO must grant
// what the loop granted the worker (initialWindow, maxFrameSize), and the
// loop answers it with the worker's own HELLO. Frames on stream 0 stay
// between the loop and each peer (HELLO, PING). A stream is forgotten
// once both sides have ended it (FIN, END, WS_CLOSE) or either reset it.
type side struct {
	fd         int
	ch         *channel
	in         queue
	out        queue
	greeted    bool                   // the session's HELLO came and was answered
	readingIn  bool                   // registered for EPOLLIN (off while the worker's backlog is full)
	pollingOut bool                   // registered for EPOLLOUT
	last       uint32                 // the highest stream id the session opened
	goneAway   bool                   // GOAWAY sent to the session
	byOwn      map[uint32]uint32      // the session's stream id → the channel's
	streams    map[uint32]*sideStream // by the channel's stream id
}

// sideStream is one relayed stream.
type sideStream struct {
	own          uint32 // its id in the side session
	sessionEnded bool   // the session's side of it has ended
	workerEnded  bool   // the worker's side of it has ended
}

// openSide makes ch's side session and returns its far end, for ch's
// set; nil without one (no descriptors left): the net/http server's
// requests for the VM then go through init.
func (l *loop) openSide(ch *channel) *os.File {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.f.log.Warn("worker channel: no side session for the net/http front; its requests go through init", "worker", ch.wc.Worker, "err", err)
		return nil
	}
	s := &side{fd: fds[0], ch: ch, readingIn: true, byOwn: map[uint32]uint32{}, streams: map[uint32]*sideStream{}}
	if err := l.watch(unix.EPOLL_CTL_ADD, s.fd, true, false); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		l.f.log.Warn("worker channel: side session not watched", "worker", ch.wc.Worker, "err", err)
		return nil
	}
	ch.side = s
	l.sides[s.fd] = s
	unix.SetNonblock(fds[1], false) // (net.FileConn puts it in the runtime's poller)
	return os.NewFile(uintptr(fds[1]), "side session")
}

// closeSide ends ch's side session: its streams on the worker are reset,
// and the session sees its connection end (its requests fail, as they
// would on a dead worker's channel).
func (l *loop) closeSide(ch *channel) {
	s := ch.side
	if s == nil {
		return
	}
	ch.side = nil
	for id, st := range s.streams {
		if !st.sessionEnded || !st.workerEnded {
			ch.out.sendFrame(frame.TypeReset, 0, id, (&message.Reset{Code: codeCancel}).Append(nil))
			l.markChannel(ch)
		}
		l.forgetSide(s, id)
	}
	delete(l.sides, s.fd)
	unix.Close(s.fd)
	s.fd = -1
}

// forgetSide drops a relayed stream: its slot on the worker is free.
func (l *loop) forgetSide(s *side, id uint32) {
	st := s.streams[id]
	if st == nil {
		return
	}
	delete(s.streams, id)
	delete(s.byOwn, st.own)
	s.ch.outstanding--
	if len(l.stalled) > 0 {
		l.wakeStalled(s.ch.set, 1)
	}
}

// readSide reads what the side session sent and relays each whole frame.
func (l *loop) readSide(s *side) {
	n, err := unix.Read(s.fd, s.in.tail(64<<10))
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	if n <= 0 {
		l.closeSide(s.ch) // the set closed the session: the VM is stopping
		return
	}
	s.in.commit(n)
	p := s.in.bytes()
	for len(p) >= frame.HeaderSize && s.fd >= 0 {
		fh := frame.ParseHeader(p)
		if err := fh.Validate(max(s.ch.peer.MaxFrameSize, 16<<10)); err != nil {
			l.sideBroke(s, err)
			return
		}
		if len(p) < frame.HeaderSize+int(fh.Length) {
			break
		}
		if err := l.sideFrame(s, fh, p[:frame.HeaderSize+int(fh.Length)]); err != nil {
			l.sideBroke(s, err)
			return
		}
		p = p[frame.HeaderSize+int(fh.Length):]
	}
	if s.fd >= 0 {
		s.in.consume(s.in.len() - len(p))
		l.pauseSide(s)
	}
}

// sideBroke closes a side session that broke the protocol (a bug: the
// session is the agent's own).
func (l *loop) sideBroke(s *side, err error) {
	l.f.log.Error("worker channel: the side session broke the protocol; closed", "worker", s.ch.wc.Worker, "err", err)
	l.closeSide(s.ch)
}

// pauseSide stops reading the side session while the worker's backlog is
// full, and resumes once it is written (writeChannel): the session's
// writes then wait in its socket.
func (l *loop) pauseSide(s *side) {
	if want := s.ch.out.len() < maxBacklog; want != s.readingIn && s.fd >= 0 {
		s.readingIn = want
		if err := l.watch(unix.EPOLL_CTL_MOD, s.fd, want, s.pollingOut); err != nil {
			l.closeSide(s.ch)
		}
	}
}

// sideFrame relays one whole frame, raw (header included), from the side
// session to the worker.
func (l *loop) sideFrame(s *side, fh frame.Header, raw []byte) error {
	ch := s.ch
	payload := raw[frame.HeaderSize:]
	if !s.greeted {
		if fh.Type != frame.TypeHello {
			return fmt.Errorf("first frame is %s, not HELLO", fh.Type)
		}
		var h message.Hello
		if err := h.Unmarshal(payload); err != nil {
			return fmt.Errorf("HELLO: %w", err)
		}
		if h.Role != 1 || h.InitialWindow != initialWindow || h.MaxFrameSize != maxFrameSize {
			return fmt.Errorf("HELLO %+v: it must grant the worker what the loop granted it (window %d, frames %d)", h, initialWindow, maxFrameSize)
		}
		s.greeted = true
		w := ch.peer // the worker's limits, which the relayed streams are under
		ours := message.Hello{Version: 1, Role: 2, MaxFrameSize: w.MaxFrameSize, InitialWindow: w.InitialWindow,
			MaxStreams: w.MaxStreams, Compression: w.Compression, Agent: w.Agent}
		s.out.sendFrame(frame.TypeHello, 0, 0, ours.Append(nil))
		if ch.goingAway {
			l.sideGoAway(s)
		}
		l.markChannel(ch)
		return nil
	}
	switch fh.Type {
	case frame.TypePing:
		if !fh.Has(frame.FlagAck) {
			if s.out.len() >= maxQueued {
				return errors.New("PINGs while the session reads nothing")
			}
			s.out.sendFrame(frame.TypePing, frame.FlagAck, 0, payload)
			l.markChannel(ch)
		}
		return nil
	case frame.TypeGoAway:
		return nil // the session closes its end once its streams are done
	case frame.TypeRequest:
		return l.sideOpen(s, fh, raw)
	}
	if fh.Type.ConnectionLevel() {
		return fmt.Errorf("unexpected %s frame", fh.Type)
	}
	id, ok := s.byOwn[fh.StreamID]
	if !ok {
		return nil // a stream already forgotten: late frames pass
	}
	st := s.streams[id]
	relayFrame(&ch.out, id, raw)
	l.markChannel(ch)
	switch {
	case fh.Type == frame.TypeReset:
		l.forgetSide(s, id)
	case fh.Type == frame.TypeEnd || fh.Type == frame.TypeWSClose || (fh.Type == frame.TypeData && fh.Has(frame.FlagFin)):
		st.sessionEnded = true
		if st.workerEnded {
			l.forgetSide(s, id)
		}
	}
	return nil
}

// sideOpen relays a REQUEST of the side session: its stream gets the
// channel's next id, or is refused when the worker takes no more.
func (l *loop) sideOpen(s *side, fh frame.Header, raw []byte) error {
	ch := s.ch
	own := fh.StreamID
	if own%2 == 0 || own <= s.last {
		return fmt.Errorf("REQUEST on stream %d after %d", own, s.last)
	}
	s.last = own
	if ch.fd < 0 || ch.goingAway || ch.outstanding >= int(ch.peer.MaxStreams) || ch.next > maxStreamID {
		s.out.sendFrame(frame.TypeReset, 0, own, (&message.Reset{Code: frame.CodeRefusedStream}).Append(nil))
		l.markChannel(ch)
		return nil
	}
	id := ch.next
	if ch.next += 2; ch.next > maxStreamID {
		l.goAway(ch)
	}
	s.byOwn[own] = id
	s.streams[id] = &sideStream{own: own, sessionEnded: fh.Has(frame.FlagFin)}
	ch.outstanding++
	relayFrame(&ch.out, id, raw)
	l.markChannel(ch)
	return nil
}

// sideGoAway tells the side session that the worker takes no new
// streams: the set then drops it, and its open streams finish.
func (l *loop) sideGoAway(s *side) {
	if s.goneAway || !s.greeted {
		return // (greeting it says GOAWAY when due)
	}
	s.goneAway = true
	g := message.GoAway{LastStreamID: s.last, Code: frame.CodeNoError, Message: []byte("the worker takes no new requests")}
	s.out.sendFrame(frame.TypeGoAway, 0, 0, g.Append(nil))
	l.markChannel(s.ch)
}

// workerToSide relays one whole frame, raw, of a stream the side session
// opened, from the worker to the session. It reports false for a stream
// that is not the side session's. (What waits for the session is bounded:
// channelFrames stops reading the worker past maxBacklog.)
func (l *loop) workerToSide(ch *channel, fh frame.Header, raw []byte) bool {
	s := ch.side
	if s == nil {
		return false
	}
	st := s.streams[fh.StreamID]
	if st == nil {
		return false
	}
	relayFrame(&s.out, st.own, raw)
	l.markChannel(ch)
	switch {
	case fh.Type == frame.TypeReset:
		l.forgetSide(s, fh.StreamID)
	case fh.Type == frame.TypeEnd || fh.Type == frame.TypeWSClose || fh.Has(frame.FlagFin):
		st.workerEnded = true
		if st.sessionEnded {
			l.forgetSide(s, fh.StreamID)
		}
	}
	return true
}

// relayFrame appends raw, a whole frame, to q with its stream id set to id.
func relayFrame(q *queue, id uint32, raw []byte) {
	q.write(raw)
	at := len(q.b) - len(raw)
	binary.BigEndian.PutUint32(q.b[at+2:at+6], id) // the header's stream id
}

// writeSide writes the side session's pending frames.
func (l *loop) writeSide(s *side) {
	if s.out.len() > 0 {
		n, err := unix.Write(s.fd, s.out.bytes())
		if err != nil && err != unix.EAGAIN {
			l.closeSide(s.ch)
			return
		}
		s.out.consume(max(n, 0))
	}
	if want := s.out.len() > 0; want != s.pollingOut {
		s.pollingOut = want
		if err := l.watch(unix.EPOLL_CTL_MOD, s.fd, s.readingIn, want); err != nil {
			l.closeSide(s.ch)
		}
	}
}
