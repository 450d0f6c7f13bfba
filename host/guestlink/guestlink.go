// Package guestlink serves the streams a VM's init opens toward the host
// agent, the calls of the guest API (protocol/SPEC.md §5.7), with an
// http.Handler: each stream becomes an *http.Request whose body is the
// stream's, and what the handler writes becomes the stream's RESPONSE,
// DATA and END. How many calls run at once is the session's bound on
// guest-opened streams (contract.MaxAPIStreams); a request body is cut at
// contract.MaxAPIBody; a handler that panics answers 500 (or resets the
// stream when its answer had begun) and the agent goes on. Without a
// handler every call is answered 503. A guest that stalls, sending its
// body or reading the answer, holds a handler until CallTimeout at most:
// its reads and writes then fail (http.ResponseController's
// SetReadDeadline and SetWriteDeadline move those deadlines).
package guestlink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/ferry-vm/ferry/internal/httpstream"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// CallTimeout bounds, from the call's start, the handler's reads of the
// request body and writes of its answer: the guest is a program's VM, a
// stalled one must not hold the agent's goroutines and buffers. Init
// bounds its callers' bodies to a minute (guest/hostapi): twice that.
const CallTimeout = 2 * time.Minute

// NoAPI is the message of the 503 a call gets from a host that serves no
// guest API.
const NoAPI = "the host serves no guest API"

// Handler returns a mux.Config.Handler that serves each stream the guest
// opens with h; nil h answers every call 503 (NoAPI). Log receives the
// handlers' panics and broken streams; nil discards them.
func Handler(h http.Handler, log *slog.Logger) func(*mux.Stream) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			Error(w, http.StatusServiceUnavailable, "unavailable", NoAPI)
		})
	}
	return func(st *mux.Stream) { serve(h, log, st) }
}

// Error writes the guest API's JSON error, {"error": {"code", "message"}},
// with status (httpstream.JSONError, which init's errors use too).
func Error(w http.ResponseWriter, status int, code, msg string) {
	httpstream.JSONError(w, status, code, msg)
}

// serve answers one stream with h.
func serve(h http.Handler, log *slog.Logger, st *mux.Stream) {
	var head message.RequestHead
	if err := st.RequestHead(&head); err != nil {
		st.Reset(frame.CodeProtocol, "malformed request head: "+err.Error())
		return
	}
	if head.Kind != message.KindHTTP {
		st.Reset(frame.CodeProtocol, "the guest API takes http streams, not websockets")
		return
	}
	// The call is abandoned when the guest resets the stream (the program
	// left, or init gave up waiting).
	ctx, cancel := httpstream.StreamContext(context.Background(), st)
	defer cancel()
	req, _, err := httpstream.NewRequest(ctx, &head, st)
	if err != nil {
		st.Reset(frame.CodeProtocol, err.Error())
		return
	}
	// A request as a server sees it: no scheme or host in the URL, the
	// target as sent, the calling process's address.
	req.URL.Scheme, req.URL.Host = "", ""
	req.RequestURI = req.URL.RequestURI()
	req.RemoteAddr = net.JoinHostPort(string(head.ClientHost), strconv.Itoa(int(head.ClientPort)))
	if req.Body != http.NoBody {
		req.Body = &limitedBody{r: st, left: contract.MaxAPIBody}
	}
	deadline := time.Now().Add(CallTimeout)
	st.SetReadDeadline(deadline)
	st.SetWriteDeadline(deadline)
	w := &responseWriter{st: st, header: http.Header{}}
	defer func() {
		if r := recover(); r != nil {
			if r == http.ErrAbortHandler {
				st.Reset(frame.CodeCancel, "handler aborted")
				return
			}
			log.Error("guest API handler panicked", "panic", r, "path", req.URL.Path, "stack", string(debug.Stack()))
			if w.sent {
				st.Reset(frame.CodeInternal, "the host's guest API failed")
				return
			}
			w.header = http.Header{}
			w.status = 0
			Error(w, http.StatusInternalServerError, "internal", "the host's guest API failed")
		}
		if err := w.finish(); err != nil {
			// Not NO_ERROR below: that would say the answer is whole.
			st.Reset(frame.CodeCancel, "the answer broke off")
			if ctx.Err() == nil {
				log.Debug("guest API answer broke off", "path", req.URL.Path, "err", err)
			}
			return
		}
		// The answer is complete: a request body the handler did not read
		// is not wanted (SPEC §5.3, RESET NO_ERROR after the response).
		if _, err := st.TryRead(nil); err != io.EOF {
			st.Reset(frame.CodeNoError, "response complete")
		}
	}()
	h.ServeHTTP(w, req)
}

// limitedBody is a request body cut at left bytes: reading past it fails
// with *http.MaxBytesError, which handlers answer 413.
type limitedBody struct {
	r    io.Reader
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte tells a body of exactly the limit from a longer one.
		var one [1]byte
		if n, err := b.r.Read(one[:]); n == 0 && err != nil {
			return 0, err
		}
		return 0, &http.MaxBytesError{Limit: contract.MaxAPIBody}
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return nil }

// responseWriter writes a handler's answer on the stream: the RESPONSE
// head with the first body bytes, the rest as DATA, END when the handler
// returns.
type responseWriter struct {
	st     *mux.Stream
	header http.Header
	status int
	sent   bool // the RESPONSE head went out
	err    error
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(status int) {
	if w.status != 0 || status < 200 || status > 999 {
		return // informational answers are not relayed; only the first status counts
	}
	w.status = status
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.sent {
		if err := w.sendHead(p, false); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	n, err := w.st.Write(p)
	if err != nil {
		w.err = fmt.Errorf("the guest went away: %w", err)
	}
	return n, w.err
}

// Flush sends the head if it has not gone out yet (the body is never held
// back: every Write goes out at once).
func (w *responseWriter) Flush() {
	if !w.sent && w.err == nil {
		_ = w.sendHead(nil, false)
	}
}

func (w *responseWriter) sendHead(body []byte, end bool) error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.sent = true
	rh := httpstream.ResponseHead(w.status, w.header, false)
	err := w.st.WriteResponse(&rh, body, end)
	if errors.Is(err, mux.ErrHeadTooLarge) {
		w.st.Reset(frame.CodeAppError, "the guest API's response head is too large")
	}
	if err != nil {
		w.err = fmt.Errorf("answering the guest: %w", err)
	}
	return w.err
}

// SetReadDeadline makes the request body's reads fail with
// mux.ErrTimeout after t (http.ResponseController).
func (w *responseWriter) SetReadDeadline(t time.Time) error { return w.st.SetReadDeadline(t) }

// SetWriteDeadline makes the answer's writes fail with mux.ErrTimeout
// after t (http.ResponseController).
func (w *responseWriter) SetWriteDeadline(t time.Time) error { return w.st.SetWriteDeadline(t) }

// finish ends the answer.
func (w *responseWriter) finish() error {
	if w.err != nil {
		return w.err
	}
	if !w.sent {
		return w.sendHead(nil, true)
	}
	return w.st.CloseWrite()
}
