// Package dataplane keeps the host's direct sessions with one VM's ASGI
// workers (protocol/SPEC.md §11): it receives each worker's data channel
// from init over the VM's channel socket, greets the worker as the client
// of a Ferry session, and hands requests the least busy live session. A
// session leaves the set when it ends (its worker died) or says GOAWAY
// (its worker is stopping); a restarted worker's new channel replaces its
// old one. With no live session, Pick says so and the caller sends the
// request through init, which still routes.
package dataplane

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// HandshakeTimeout bounds how long a worker has to answer the host's
// HELLO on a new channel; init passes a channel only once its worker is
// configured, so it answers at once.
const HandshakeTimeout = 10 * time.Second

// WorkerMaxFrame is the largest frame the host accepts from a worker on
// its data channel: a response body comes in frames of up to this size
// (within the stream's window), so a 1 MiB body is 4 frames rather than
// 16, each read by the agent straight into its frame buffer.
const WorkerMaxFrame = 256 << 10

// Options configure a Set.
type Options struct {
	// Log receives the set's lines (channels added, dropped, refused).
	Log *slog.Logger
	// Agent names the host in HELLO.
	Agent string
	// Adopter, when set, takes every channel over as it arrives, in
	// place of a session of the set's own: the set then only receives
	// channels, Pick finds no live session (requests it is asked for go
	// through init) and Close tells the adopter to close them.
	Adopter Adopter
}

// Adopter takes a set's worker channels over: the host agent's event-loop
// front (host/loopfront), which speaks the protocol on them itself.
type Adopter interface {
	// Adopt owns conn, the host's end of ch, from the call on; it greets
	// the worker itself.
	Adopt(set *Set, ch contract.WorkerChannel, conn *os.File)
	// Forget closes every channel of set it adopted: the VM is stopping.
	Forget(set *Set)
	// Live returns how many of set's channels it holds, for status.
	Live(set *Set) int
}

// Set is the live worker sessions of one VM.
type Set struct {
	ch  *contract.Channels
	opt Options
	log *slog.Logger

	// live is read by Pick without a lock (copy on write under mu).
	live atomic.Pointer[[]*member]

	mu     sync.Mutex
	byID   map[uint32]*member   // the live session of each worker
	open   map[*member]struct{} // every session not yet ended, live or going away
	closed bool

	wg sync.WaitGroup
}

// member is one worker's session.
type member struct {
	ch          contract.WorkerChannel
	sess        *mux.Session
	outstanding atomic.Int64 // requests picked and not yet done
}

// New returns the set of ch's channels and starts receiving them until
// Close. ch is the host's end of the VM's channel socket; the set owns it.
func New(ch *contract.Channels, opt Options) *Set {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Agent == "" {
		opt.Agent = "ferry-host-agent"
	}
	s := &Set{ch: ch, opt: opt, log: opt.Log, byID: map[uint32]*member{}, open: map[*member]struct{}{}}
	s.live.Store(&[]*member{})
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.receive() }()
	return s
}

// Pick returns the live session with the fewest requests outstanding and
// counts one more against it until done is called; nil (and a done that
// does nothing) when no worker session is live.
func (s *Set) Pick() (sess *mux.Session, done func()) {
	var best *member
	var load int64
	for _, m := range *s.live.Load() {
		if n := m.outstanding.Load(); best == nil || n < load {
			best, load = m, n
		}
	}
	if best == nil {
		return nil, func() {}
	}
	best.outstanding.Add(1)
	return best.sess, func() { best.outstanding.Add(-1) }
}

// Len returns how many worker sessions are live (or, with an Adopter,
// how many channels it holds).
func (s *Set) Len() int {
	if s.opt.Adopter != nil {
		return s.opt.Adopter.Live(s)
	}
	return len(*s.live.Load())
}

// Workers returns the channel of each live session, for status and
// tests.
func (s *Set) Workers() []contract.WorkerChannel {
	live := *s.live.Load()
	out := make([]contract.WorkerChannel, len(live))
	for i, m := range live {
		out[i] = m.ch
	}
	return out
}

// Close stops receiving channels and closes every session (their streams
// fail); it waits for the set's goroutines.
func (s *Set) Close() {
	s.mu.Lock()
	s.closed = true
	members := make([]*member, 0, len(s.open))
	for m := range s.open {
		members = append(members, m)
	}
	s.byID = map[uint32]*member{}
	s.publishLocked()
	s.mu.Unlock()
	s.ch.Close()
	for _, m := range members {
		m.sess.Close()
	}
	s.wg.Wait()
	if s.opt.Adopter != nil {
		// After the receiving goroutine ended: no Adopt follows.
		s.opt.Adopter.Forget(s)
	}
}

// Join adds a session on conn as if conn were ch's channel: with an
// Adopter, the adopter's side session for the worker (it relays the
// session's streams onto the channel it holds), so that the requests the
// net/http front serves reach the worker directly too. The set owns conn.
func (s *Set) Join(ch contract.WorkerChannel, conn *os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		conn.Close()
		return
	}
	s.wg.Add(1) // (under mu: Close waits only once closed is set)
	go func() { defer s.wg.Done(); s.join(ch, conn) }()
}

// receive takes channels until the socket ends.
func (s *Set) receive() {
	for {
		ch, f, err := s.ch.Receive()
		if errors.Is(err, contract.ErrBadChannel) {
			s.log.Warn("init passed a malformed worker channel; ignored", "err", err)
			continue
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("the VM's channel socket failed; its workers are reached through init", "err", err)
			}
			return
		}
		if s.opt.Adopter != nil {
			s.opt.Adopter.Adopt(s, ch, f)
			continue
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.join(ch, f) }()
	}
}

// join greets the worker on its new channel and adds its session, in
// place of an older channel of the same worker; the session leaves the
// set when it ends or its worker says GOAWAY.
func (s *Set) join(ch contract.WorkerChannel, f *os.File) {
	log := s.log.With("worker", ch.Worker, "start", ch.Start)
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		log.Warn("unusable worker channel", "err", err)
		return
	}
	sess := mux.Client(conn, mux.Config{
		Agent:        s.opt.Agent,
		Logger:       log,
		MaxFrameSize: WorkerMaxFrame,
		// Workers open no streams toward the host.
		MaxStreams: 1,
		Handler: func(st *mux.Stream) {
			st.Reset(frame.CodeRefusedStream, "a worker's data channel carries the host's requests only")
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
	_, err = sess.Handshake(ctx)
	cancel()
	if err != nil {
		log.Warn("worker channel: no HELLO from the worker", "err", err)
		sess.Close()
		return
	}
	m := &member{ch: ch, sess: sess}
	s.mu.Lock()
	old := s.byID[ch.Worker]
	if s.closed || (old != nil && old.ch.Start > ch.Start) {
		s.mu.Unlock()
		sess.Close() // the set is closing, or this channel is already stale
		return
	}
	s.byID[ch.Worker] = m
	s.open[m] = struct{}{}
	s.publishLocked()
	s.mu.Unlock()
	if old != nil {
		old.sess.Close() // its worker was restarted: the old session is dead or dying
	}
	log.Debug("worker session added")
	select {
	case <-sess.Done():
	case <-sess.GoAwayReceived():
	}
	s.drop(m)
	<-sess.Done() // a worker going away finishes its streams, then exits
	s.mu.Lock()
	delete(s.open, m)
	s.mu.Unlock()
	log.Debug("worker session ended", "err", sess.Err())
}

// drop removes m from the set, if it is still there.
func (s *Set) drop(m *member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID[m.ch.Worker] == m {
		delete(s.byID, m.ch.Worker)
		s.publishLocked()
	}
}

// publishLocked makes the members in byID the ones Pick sees, in worker
// order.
func (s *Set) publishLocked() {
	live := make([]*member, 0, len(s.byID))
	for _, m := range s.byID {
		live = append(live, m)
	}
	slices.SortFunc(live, func(a, b *member) int { return cmp.Compare(a.ch.Worker, b.ch.Worker) })
	s.live.Store(&live)
}
