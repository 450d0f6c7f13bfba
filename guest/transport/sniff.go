package transport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"
)

// SniffTimeout bounds how long a new connection may stay silent before
// its first byte says which protocol it speaks. Both protocols served on
// one listener have the connecting side speak first and at once (Ferry's
// host sends HELLO without waiting, protocol/SPEC.md §3.1; the reference
// supervisor writes its document right after CONNECT), so a silent
// connection is a dead one.
const SniffTimeout = 30 * time.Second

// Sniffed is a listener whose connections are sorted by their first byte:
// those for which ours says true are handed out by Accept, as the plain
// listener would; the others are given to Other, each on a goroutine of
// its own, so that many short connections of the other protocol are
// served at once while Accept's caller serves one long session.
type Sniffed struct {
	l     Listener
	ours  func(first byte) bool
	other func(ctx context.Context, conn io.ReadWriteCloser)
	log   *slog.Logger

	start  sync.Once
	conns  chan io.ReadWriteCloser
	errc   chan error
	ctx    context.Context
	cancel context.CancelFunc
}

// Sniff wraps l (see Sniffed). ctx bounds the connections given to other.
func Sniff(ctx context.Context, l Listener, ours func(first byte) bool, other func(ctx context.Context, conn io.ReadWriteCloser), log *slog.Logger) *Sniffed {
	ctx, cancel := context.WithCancel(ctx)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sniffed{l: l, ours: ours, other: other, log: log, conns: make(chan io.ReadWriteCloser), errc: make(chan error, 1), ctx: ctx, cancel: cancel}
}

// Accept returns the next connection whose first byte is ours; that byte
// is read again by the caller.
func (s *Sniffed) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	s.start.Do(func() { go s.acceptLoop() })
	select {
	case c := <-s.conns:
		return c, nil
	case err := <-s.errc:
		s.errc <- err // every later call sees it too
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// acceptLoop accepts until the listener fails or is closed.
func (s *Sniffed) acceptLoop() {
	for {
		c, err := s.l.Accept(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, ErrClosed) {
				s.errc <- ErrClosed
				return
			}
			s.log.Warn("accepting a host connection failed", "transport", s.l.String(), "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-s.ctx.Done():
			}
			continue
		}
		go s.sort(c)
	}
}

// sort reads c's first byte and hands c on.
func (s *Sniffed) sort(c io.ReadWriteCloser) {
	first := make([]byte, 1)
	d, hasDeadline := c.(interface{ SetReadDeadline(time.Time) error })
	if hasDeadline {
		d.SetReadDeadline(time.Now().Add(SniffTimeout))
	}
	if _, err := io.ReadFull(c, first); err != nil {
		s.log.Debug("a host connection closed before its first byte", "err", err)
		c.Close()
		return
	}
	if hasDeadline {
		d.SetReadDeadline(time.Time{})
	}
	pc := &peeked{ReadWriteCloser: c, first: first}
	if !s.ours(first[0]) {
		s.other(s.ctx, pc)
		return
	}
	select {
	case s.conns <- pc:
	case <-s.ctx.Done():
		c.Close()
	}
}

// Close closes the listener; connections already handed out stay open.
func (s *Sniffed) Close() error {
	s.cancel()
	return s.l.Close()
}

func (s *Sniffed) String() string { return s.l.String() }

// peeked is a connection whose first bytes were read already.
type peeked struct {
	io.ReadWriteCloser
	first []byte
}

func (p *peeked) Read(b []byte) (int, error) {
	if len(p.first) > 0 {
		n := copy(b, p.first)
		p.first = p.first[n:]
		return n, nil
	}
	return p.ReadWriteCloser.Read(b)
}

// SetReadDeadline passes a deadline to the connection, when it takes one.
func (p *peeked) SetReadDeadline(t time.Time) error {
	if d, ok := p.ReadWriteCloser.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t)
	}
	return errors.ErrUnsupported
}

// CloseWrite half-closes the connection, when it can.
func (p *peeked) CloseWrite() error {
	if cw, ok := p.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
