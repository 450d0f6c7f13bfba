package front

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/host/relay"
)

// Defaults of the agent's HTTP limits. The timeouts are nginx's
// (client_header_timeout, client_body_timeout, send_timeout,
// keepalive_timeout), with a shorter header timeout: a request head is
// one packet or a few, and a slow one is the slowloris attack.
const (
	// DefaultMaxConcurrent is how many requests one program serves at
	// once: half the streams one session to init carries (1,024), so
	// that requests never wait for a stream without a bound.
	DefaultMaxConcurrent = 512
	// DefaultQueueTimeout is how long a request past the limit waits for
	// a slot before it is answered 503: long enough to absorb a burst of
	// short requests, short enough that a client retries elsewhere soon.
	DefaultQueueTimeout     = 250 * time.Millisecond
	DefaultHeaderTimeout    = 10 * time.Second
	DefaultBodyTimeout      = 60 * time.Second
	DefaultSendTimeout      = 60 * time.Second
	DefaultKeepaliveTimeout = 75 * time.Second
	// lingerTimeout bounds how long the rest of a request body the
	// handler did not read is read and discarded after the response
	// (nginx's lingering_timeout), so the connection can be reused.
	lingerTimeout = 5 * time.Second
	// retryAfter is the Retry-After of a 503 for a program at its limit.
	retryAfter = "1"
)

// ConnLimits are the timeouts of one of the agent's HTTP listeners. Each
// bounds a wait for the client, never a whole exchange: a long streamed
// response, a slow but steady upload or a websocket lives as long as it
// moves. Zero fields take the defaults.
type ConnLimits struct {
	// Header bounds reading a request head, from its first byte.
	Header time.Duration
	// Body bounds each wait for request body bytes; past it the request
	// ends, with 408 if nothing was answered yet.
	Body time.Duration
	// Send bounds each write of response bytes to the client (a client
	// that stops reading), and the answers net/http writes itself.
	Send time.Duration
	// Keepalive bounds how long an idle keep-alive connection is kept.
	Keepalive time.Duration
	// Log receives the detail of a 408 (optional).
	Log *slog.Logger
}

// WithDefaults returns l with its zero fields set to the defaults.
func (l ConnLimits) WithDefaults() ConnLimits {
	or := func(v, def time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return def
	}
	l.Header = or(l.Header, DefaultHeaderTimeout)
	l.Body = or(l.Body, DefaultBodyTimeout)
	l.Send = or(l.Send, DefaultSendTimeout)
	l.Keepalive = or(l.Keepalive, DefaultKeepaliveTimeout)
	return l
}

// Apply sets srv's timeouts and wraps its handler so that request bodies
// and response writes time out between reads and between writes. (An
// http.Server's ReadTimeout and WriteTimeout bound a whole request and
// response, which would cut long streams and websockets.)
func (l ConnLimits) Apply(srv *http.Server) {
	l = l.WithDefaults()
	srv.ReadHeaderTimeout = l.Header
	srv.IdleTimeout = l.Keepalive
	// The deadline for what net/http writes itself (a 400, a 431, a 100
	// Continue) after reading a request head; sendGuard extends it before
	// each write of the handler's, and a hijacked connection drops it.
	srv.WriteTimeout = l.Send
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { l.serve(next, w, r) })
}

// serve runs next with the body read and the response written under
// deadlines renewed at each read and write.
func (l ConnLimits) serve(next http.Handler, w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	// net/http has just set the write deadline (srv.WriteTimeout).
	sg := &sendGuard{ResponseWriter: w, rc: rc, timeout: l.Send, renewed: time.Now()}
	var bg *bodyGuard
	if r.Body != nil && r.Body != http.NoBody {
		bg = &bodyGuard{ReadCloser: r.Body, rc: rc, timeout: l.Body, sendTimeout: l.Send}
		// A copy, so that net/http still sees its own body type in the
		// original request when it decides whether to discard the rest.
		r2 := new(http.Request)
		*r2 = *r
		r2.Body = bg
		r = r2
	}
	defer func() {
		if bg != nil {
			bg.finish()
		}
	}()
	next.ServeHTTP(sg, r)
	if sg.hijacked {
		return
	}
	if bg != nil && !bg.eof.Load() {
		if bg.timedOut.Load() && !sg.wrote {
			w.Header().Set("Connection", "close")
			relay.Error(w, &relay.Exchange{ID: relay.NewRequestID(), Log: l.Log}, http.StatusRequestTimeout,
				"the request body did not arrive in time", "body_timeout", l.Body)
		}
		// The unread rest is discarded after the handler, for a while.
		bg.linger(min(l.Body, lingerTimeout))
	}
	// What net/http still writes after the handler (the buffered end of
	// the response) gets a deadline of its own.
	sg.extend()
}

// bodyGuard renews the connection's read deadline before each read of the
// request body. Once the body hit EOF, net/http reads the connection in
// the background (to notice a client that leaves) and clears the
// deadline itself; after the handler, the guard no longer touches the
// connection, which may be serving the next request.
type bodyGuard struct {
	io.ReadCloser
	rc                   *http.ResponseController
	timeout, sendTimeout time.Duration

	eof, timedOut atomic.Bool
	mu            sync.Mutex
	done          bool // the handler returned
	read          bool // a read happened
}

func (b *bodyGuard) Read(p []byte) (int, error) {
	b.mu.Lock()
	if !b.done && !b.eof.Load() {
		now := time.Now()
		b.rc.SetReadDeadline(now.Add(b.timeout))
		if !b.read {
			// The first read may make net/http write "100 Continue".
			b.rc.SetWriteDeadline(now.Add(b.sendTimeout))
			b.read = true
		}
	}
	b.mu.Unlock()
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		b.eof.Store(true)
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.timedOut.Store(true)
	}
	return n, err
}

// linger sets how long net/http may read the unread rest of the body.
func (b *bodyGuard) linger(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		b.rc.SetReadDeadline(time.Now().Add(d))
	}
}

// finish marks the end of the handler.
func (b *bodyGuard) finish() {
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
}

// sendGuard renews the connection's write deadline before each write and
// flush of the response (unless it was set a moment ago: see extend), and
// notes whether anything was written and
// whether the connection was taken over (a websocket, an upgrade: net/http
// clears the deadlines of a hijacked connection).
type sendGuard struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration

	// handler goroutine only:
	renewed         time.Time // when the deadline was last set, timeout later
	wrote, hijacked bool
}

// extend sets the write deadline timeout from now, unless it was set less
// than a 64th of the timeout ago: every write still gets at least 63/64
// of the timeout, and the few writes of a short response (the head and
// body, the end net/http flushes) do not move a timer each.
func (s *sendGuard) extend() {
	now := time.Now()
	if now.Sub(s.renewed) < s.timeout/64 {
		return
	}
	s.renewed = now
	s.rc.SetWriteDeadline(now.Add(s.timeout))
}

// WriteHeader implements http.ResponseWriter.
func (s *sendGuard) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		s.wrote = true
	}
	s.ResponseWriter.WriteHeader(code)
}

// Write implements http.ResponseWriter.
func (s *sendGuard) Write(p []byte) (int, error) {
	s.wrote = true
	s.extend()
	return s.ResponseWriter.Write(p)
}

// Flush implements http.Flusher.
func (s *sendGuard) Flush() {
	s.extend()
	s.rc.Flush()
}

// Hijack implements http.Hijacker.
func (s *sendGuard) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	s.hijacked = true
	return s.rc.Hijack()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *sendGuard) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// RequestLimits bound the requests one program serves at once.
type RequestLimits struct {
	// MaxConcurrent requests (websockets and upgrades included, for as
	// long as they are open); 0: DefaultMaxConcurrent.
	MaxConcurrent int
	// QueueTimeout is how long a request past MaxConcurrent waits for a
	// slot before a 503; 0: DefaultQueueTimeout.
	QueueTimeout time.Duration
}

// WithDefaults returns l with its zero fields set to the defaults.
func (l RequestLimits) WithDefaults() RequestLimits {
	if l.MaxConcurrent <= 0 {
		l.MaxConcurrent = DefaultMaxConcurrent
	}
	if l.QueueTimeout <= 0 {
		l.QueueTimeout = DefaultQueueTimeout
	}
	return l
}

// Limiter counts one program's requests in flight against its limit.
type Limiter struct {
	slots chan struct{}
	wait  time.Duration
}

// NewLimiter returns a limiter for l (defaults filled in).
func NewLimiter(l RequestLimits) *Limiter {
	l = l.WithDefaults()
	return &Limiter{slots: make(chan struct{}, l.MaxConcurrent), wait: l.QueueTimeout}
}

// Acquire takes a slot, waiting up to the queue timeout for one; false
// means the program is at its limit (or ctx ended). Every true must be
// followed by Release.
func (l *Limiter) Acquire(ctx context.Context) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(l.wait)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// TryAcquire takes a slot if one is free, without waiting; every true
// must be followed by Release.
func (l *Limiter) TryAcquire() bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// Release gives back a slot.
func (l *Limiter) Release() { <-l.slots }

// InFlight returns how many slots are taken.
func (l *Limiter) InFlight() int { return len(l.slots) }

// reject answers a request the agent refuses before relaying it. A 503
// says when to retry; a request whose body was not read closes the
// connection, so that net/http does not wait for that body before sending
// the answer.
func reject(w http.ResponseWriter, r *http.Request, ex *relay.Exchange, status int, msg string, detail ...any) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	if r.Body != nil && r.Body != http.NoBody {
		w.Header().Set("Connection", "close")
	}
	relay.Error(w, ex, status, msg, detail...)
}
