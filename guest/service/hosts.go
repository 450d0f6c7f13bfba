package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/guest/transport"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Bounds on host connections that have not completed their handshake
// (Options.HandshakeTimeout, Options.MaxPending).
const (
	// DefaultHandshakeTimeout is how long a host connection may take to
	// complete the HELLO exchange (protocol/SPEC.md §3.1). A host sends
	// HELLO as soon as it has connected, so a healthy one completes it in
	// milliseconds; one that has not after 10 s sent a partial HELLO and
	// stalled, or is not a Ferry host.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxPending is how many host connections may wait for their
	// handshake at once. A host reconnecting makes one at a time; more
	// than a few is a misbehaving peer.
	DefaultMaxPending = 8
)

// Why a host connection is closed before its handshake.
var (
	errSlowHandshake = errors.New("no handshake within the bound")
	errTooMany       = errors.New("too many host connections waiting for their handshake; this one was the oldest")
)

// pendingConn is a host connection waiting for its handshake.
type pendingConn struct {
	wait context.Context         // ends when the connection must stop waiting
	end  context.CancelCauseFunc // ends wait, with the reason
}

// Serve accepts host connections until ctx ends or the listener is
// closed. Each is served as soon as it arrives, on a goroutine of its
// own: the newest one to complete its handshake becomes the host session
// and ends the one before (a host that reconnects after a restart, or
// whose connection went half-open, is served at once), while a connection
// that stalls is closed after Options.HandshakeTimeout. A listener that
// carries one connection at a time (transport.OneAtATime: a
// virtio-serial port) is served one session after another instead.
func (s *Service) Serve(ctx context.Context, l transport.Listener) error {
	one := transport.OneAtATime(l)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, transport.ErrClosed) {
				return err
			}
			s.log.Warn("accepting host connection failed", "transport", l.String(), "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		// Counted here, in the order of arrival, so that the oldest
		// waiting is the one accepted first.
		p := s.admit(ctx)
		if one {
			s.safely("host session", func() { s.serveSession(ctx, conn, l.String(), p) })
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.safely("host session", func() { s.serveSession(ctx, conn, l.String(), p) })
		}()
	}
}

// serveSession runs the Ferry session on conn, which came over the
// transport named from and waits for its handshake as p: once the
// handshake is complete it is the host session, until it ends or a newer
// one replaces it.
func (s *Service) serveSession(ctx context.Context, conn io.ReadWriteCloser, from string, p *pendingConn) {
	// CONFIG frames arrive on the session's read loop, possibly before
	// mux.Server has returned; they are handed over through a channel.
	configs := make(chan []byte, 4)
	sess := mux.Server(conn, mux.Config{
		Agent:      s.opt.Agent,
		Logger:     s.log,
		MaxStreams: contract.MaxStreams,
		// Each stream is served on a reused goroutine, straight from the
		// read loop: no hand-off to an accepting goroutine and no stack
		// growth of a fresh one per request (which showed in profiles).
		Handler: func(st *mux.Stream) { s.serveStream(ctx, st) },
		OnControl: func(t frame.Type, payload []byte) {
			if t != frame.TypeConfig {
				return
			}
			select {
			case configs <- append([]byte(nil), payload...):
			default:
				s.log.Warn("host sent configurations faster than they can be answered; dropping one")
			}
		},
	})
	defer sess.Close()
	if !s.handshake(ctx, sess, from, p) {
		return
	}
	if prev := s.takeSession(sess); prev != nil {
		s.log.Info("a new host session replaces the previous one", "transport", from)
		prev.Close() // its streams fail; its own serveSession returns
	}
	defer s.dropSession(sess)
	// Output printed while no host was connected.
	go s.sendOutput(sess, 0)
	go func() {
		for {
			select {
			case doc := <-configs:
				s.safely("configuration", func() { s.configure(ctx, sess, doc) })
			case <-sess.Done():
				return
			}
		}
	}()
	go func() {
		select {
		case <-sess.GoAwayReceived():
			s.RequestShutdown("host sent GOAWAY")
		case <-sess.Done():
		}
	}()
	select {
	case <-sess.Done():
		s.log.Info("host session ended", "err", sess.Err())
	case <-ctx.Done():
		s.log.Info("host session ended", "err", ctx.Err())
	}
}

// handshake waits for the peer's HELLO on sess, within the handshake
// bound and while p is among the newest Options.MaxPending connections
// waiting; false when it did not come (sess is then closed by the
// caller). p is uncounted either way.
func (s *Service) handshake(ctx context.Context, sess *mux.Session, from string, p *pendingConn) bool {
	defer s.release(p)
	timeout := s.opt.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	wait, cancel := context.WithTimeoutCause(p.wait, timeout, errSlowHandshake)
	defer cancel()
	_, err := sess.Handshake(wait)
	switch {
	case err == nil:
		return true
	case ctx.Err() != nil:
	case wait.Err() != nil:
		s.log.Warn("closing a host connection that did not complete its handshake", "transport", from,
			"reason", context.Cause(wait).Error(), "bound", timeout)
	default:
		s.log.Info("a host connection ended before its handshake", "transport", from, "err", err)
	}
	return false
}

// admit counts a new connection as waiting for its handshake, ending the
// wait of the oldest ones beyond Options.MaxPending. The oldest go, not
// the newcomer: a healthy host completes its handshake within
// milliseconds of connecting, so the connections left waiting longest are
// the stalled ones, and refusing newcomers instead would let a few
// stalled connections lock a reconnecting host out for the whole
// handshake bound.
func (s *Service) admit(ctx context.Context) *pendingConn {
	limit := s.opt.MaxPending
	if limit <= 0 {
		limit = DefaultMaxPending
	}
	wait, end := context.WithCancelCause(ctx)
	p := &pendingConn{wait: wait, end: end}
	s.mu.Lock()
	var evicted []*pendingConn
	for len(s.pending) >= limit {
		evicted = append(evicted, s.pending[0])
		s.pending = s.pending[1:]
	}
	s.pending = append(s.pending, p)
	s.mu.Unlock()
	for _, e := range evicted {
		e.end(fmt.Errorf("%w (at most %d)", errTooMany, limit))
	}
	return p
}

// release uncounts p, whose wait is over.
func (s *Service) release(p *pendingConn) {
	s.mu.Lock()
	s.pending = slices.DeleteFunc(s.pending, func(q *pendingConn) bool { return q == p })
	s.mu.Unlock()
	p.end(nil)
}

// takeSession makes sess the host session and returns the one it
// replaces, if any.
func (s *Service) takeSession(sess *mux.Session) (prev *mux.Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, s.session = s.session, sess
	return prev
}

// dropSession forgets sess if it is still the host session.
func (s *Service) dropSession(sess *mux.Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.session == sess {
		s.session = nil
	}
}
