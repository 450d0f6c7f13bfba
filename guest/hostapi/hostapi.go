// Package hostapi is init's end of the guest API (protocol/SPEC.md §5.7):
// an HTTP/1.1 server on a loopback address inside the VM (the program's
// processes find it in FERRY_API_URL) that carries each call to the host
// agent as a stream init opens on its current session, and streams the
// host's answer back. Calls while no session is up are answered 503; a
// request body is cut at contract.MaxAPIBody (413), heads at
// MaxHeaderBytes (431), calls at once at Options.MaxCalls (503); a call
// whose answer does not begin within Options.HeadTimeout is 504. Errors
// are JSON: {"error": {"code": "...", "message": "..."}}. Nothing a
// program sends can stop init: every failure is one call's answer.
package hostapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/netutil"

	"github.com/ferry-vm/ferry/internal/httphdr"
	"github.com/ferry-vm/ferry/internal/httpstream"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Bounds of the in-guest server. The callers are the VM's own programs,
// so they are generous, but a looping or broken program must not be able
// to hold init's memory or goroutines without limit.
const (
	// MaxHeaderBytes bounds a call's request line and header fields (431
	// beyond), as the agent's own listener bounds its clients'. A head
	// that still encodes larger than the host's frames is 431 too.
	MaxHeaderBytes = 32 << 10
	// DefaultMaxCalls is how many calls may be in progress at once; one
	// more is answered 503 at once. Twice the host's MaxAPIStreams: half
	// of them may wait for a stream.
	DefaultMaxCalls = 2 * contract.MaxAPIStreams
	// maxConns bounds the open connections (idle keep-alive ones too).
	maxConns = 4 * DefaultMaxCalls
	// DefaultHeadTimeout bounds the wait for the host's answer to begin.
	DefaultHeadTimeout = time.Minute
)

// Options configure a Server.
type Options struct {
	// Session returns the current session with the host, or nil while
	// there is none. It is called for every call: a host that reconnects
	// replaces the session.
	Session func() *mux.Session
	// Log receives warnings; nil discards them.
	Log *slog.Logger
	// MaxCalls bounds the calls in progress (DefaultMaxCalls when 0).
	MaxCalls int
	// HeadTimeout bounds the wait for the host's RESPONSE (DefaultHeadTimeout when 0).
	HeadTimeout time.Duration
}

// Server serves the guest API on a loopback listener.
type Server struct {
	opt   Options
	log   *slog.Logger
	slots chan struct{}
	l     net.Listener
	srv   *http.Server
	done  chan struct{}
}

// Listen starts serving the guest API on addr (IP:PORT; port 0 picks
// one).
func Listen(addr string, opt Options) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := New(opt)
	s.l = netutil.LimitListener(l, maxConns)
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute, // a whole body of MaxAPIBody from a local process
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("the guest API stopped serving", "err", err)
		}
	}()
	return s, nil
}

// New returns a Server that serves calls given to ServeHTTP (Listen also
// listens).
func New(opt Options) *Server {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.MaxCalls <= 0 {
		opt.MaxCalls = DefaultMaxCalls
	}
	if opt.HeadTimeout <= 0 {
		opt.HeadTimeout = DefaultHeadTimeout
	}
	if opt.Session == nil {
		opt.Session = func() *mux.Session { return nil }
	}
	return &Server{opt: opt, log: opt.Log, slots: make(chan struct{}, opt.MaxCalls)}
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.l.Addr().String() }

// URL is the API's URL, the value of contract.APIURLEnv.
func (s *Server) URL() string { return contract.APIURL(s.Addr()) }

// Close stops serving: calls in progress get ctx to finish, then their
// connections are closed.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	<-s.done
	return err
}

// ServeHTTP carries one call to the host and its answer back.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		w.Header().Set("Retry-After", "1")
		httpstream.JSONError(w, http.StatusServiceUnavailable, "busy", "too many guest API calls at once")
		return
	}
	if r.ContentLength > contract.MaxAPIBody {
		w.Header().Set("Connection", "close")
		httpstream.JSONError(w, http.StatusRequestEntityTooLarge, "body_too_large", "the request body exceeds the guest API's limit")
		return
	}
	sess := s.opt.Session()
	if sess == nil || sess.Err() != nil {
		w.Header().Set("Retry-After", "1")
		httpstream.JSONError(w, http.StatusServiceUnavailable, "no_host", "not connected to the host agent")
		return
	}
	if len(r.TransferEncoding) > 0 {
		w.Header().Set("Connection", "close") // as the agent's relay: RFC 9112 6.1
	}
	rawPath, _, _ := strings.Cut(r.RequestURI, "?")
	if !strings.HasPrefix(rawPath, "/") {
		rawPath = r.URL.EscapedPath()
	}
	head := httpstream.RequestHead(r, r.URL.Path, rawPath, "")
	noBody := r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody
	ctx := r.Context()
	st, err := sess.Open(ctx, head, nil, noBody)
	switch {
	case errors.Is(err, mux.ErrHeadTooLarge):
		httpstream.JSONError(w, http.StatusRequestHeaderFieldsTooLarge, "head_too_large", "the request head is too large for the host")
		return
	case err != nil:
		if ctx.Err() == nil {
			w.Header().Set("Retry-After", "1")
			httpstream.JSONError(w, http.StatusServiceUnavailable, "no_host", "the host agent cannot be reached: "+err.Error())
		}
		return
	}
	// The caller leaving resets the stream: the host's handler sees its
	// context end.
	stop := context.AfterFunc(ctx, func() { st.Reset(frame.CodeCancel, "the caller went away") })
	defer stop()
	var body *httpstream.BodyCopy
	if !noBody {
		// Full duplex: the host may answer before it has read everything.
		_ = http.NewResponseController(w).EnableFullDuplex()
		body = httpstream.CopyBody(r.Body, st, contract.MaxAPIBody)
		defer body.Wait()
	}
	defer st.Close()
	hctx, cancel := context.WithTimeout(ctx, s.opt.HeadTimeout)
	defer cancel()
	var rh message.ResponseHead
	if err := st.ReadResponse(hctx, &rh); err != nil {
		s.failed(w, r, st, body, hctx, err)
		return
	}
	if rh.Status < 200 {
		st.Reset(frame.CodeProtocol, "the guest API answers with a final status")
		httpstream.JSONError(w, http.StatusBadGateway, "bad_answer", "the host sent an informational status as its answer")
		return
	}
	w.Header()["Content-Type"] = nil // never sniffed: the host's head as it is
	for _, f := range rh.Headers {
		if name := string(f.Name); !httphdr.IsHopByHop(name) {
			w.Header().Add(name, string(f.Value))
		}
	}
	w.WriteHeader(int(rh.Status))
	buf := make([]byte, 32<<10)
	flusher, _ := w.(http.Flusher)
	for {
		n, err := st.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				st.Reset(frame.CodeCancel, "the caller went away")
				return
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("a guest API answer broke off", "path", r.URL.Path, "err", err)
			}
			panic(http.ErrAbortHandler) // the caller sees the response cut short
		}
		if flusher != nil && st.Buffered() == 0 {
			flusher.Flush()
		}
	}
}

// failed answers a call whose RESPONSE did not come.
func (s *Server) failed(w http.ResponseWriter, r *http.Request, st *mux.Stream, body *httpstream.BodyCopy, hctx context.Context, err error) {
	if body != nil {
		var wait time.Duration
		if r.Context().Err() != nil {
			wait = time.Second // the caller's connection failed: so is its body
		}
		if tooLarge, readErr := body.Outcome(wait); tooLarge {
			httpstream.JSONError(w, http.StatusRequestEntityTooLarge, "body_too_large", "the request body exceeds the guest API's limit")
			return
		} else if readErr != nil {
			w.Header().Set("Connection", "close")
			httpstream.JSONError(w, http.StatusBadRequest, "bad_body", "the request body could not be read: "+readErr.Error())
			return
		}
	}
	if r.Context().Err() != nil {
		return // nobody to answer
	}
	if errors.Is(hctx.Err(), context.DeadlineExceeded) {
		st.Reset(frame.CodeTimeout, "the host did not answer in time")
		httpstream.JSONError(w, http.StatusGatewayTimeout, "timeout", "the host agent did not answer in time")
		return
	}
	status, code, msg := http.StatusBadGateway, "host_failed", "the host agent failed to answer"
	var serr *mux.StreamError
	if errors.As(err, &serr) {
		switch serr.Code {
		case frame.CodeRefusedStream, frame.CodeUnavailable:
			status, code, msg = http.StatusServiceUnavailable, "no_host", "the host agent does not serve the guest API now"
			w.Header().Set("Retry-After", "1")
		case frame.CodeBodyTooLarge:
			status, code, msg = http.StatusRequestEntityTooLarge, "body_too_large", "the request body exceeds the host's limit"
		case frame.CodeEnhanceYourCalm:
			status, code, msg = http.StatusTooManyRequests, "rate_limited", "too many guest API calls"
			w.Header().Set("Retry-After", "1")
		}
	} else if !errors.As(err, new(*mux.ProtocolError)) && !errors.Is(err, mux.ErrSessionClosed) {
		s.log.Warn("a guest API call failed", "path", r.URL.Path, "err", err)
	}
	httpstream.JSONError(w, status, code, msg)
}
