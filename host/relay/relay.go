// Package relay carries HTTP between a client of the agent and a program:
// one incoming request becomes a Ferry stream to the program's init and
// the stream's answer becomes the HTTP response, with bodies streamed both
// ways with backpressure, the response flushed chunk by chunk, a client
// that leaves reset as CANCEL; websockets and other upgrades too. Errors
// the client sees are short JSON with a request id; the detail goes to the
// agent's log. (In Ferry, "relay" means this: HTTP to a stream and back.)
package relay

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/httpstream"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Exchange is one HTTP exchange as the relay carries it: the session it
// goes to, the paths the program sees, its bounds, and the request id its
// errors and log lines carry.
type Exchange struct {
	Session  *mux.Session
	RootPath string // prefix the app is mounted under, e.g. /vm/hello
	Path     string // the path below RootPath
	RawPath  string // the same, percent-encoded as received
	MaxBody  int64  // 0: unlimited
	// Timeout bounds the whole exchange (the manifest's resources.seconds):
	// past it the stream is reset with TIMEOUT (the app sees
	// http.disconnect) and the client gets 504 if nothing was sent yet.
	Timeout time.Duration
	Log     *slog.Logger
	ID      string // request id: the client's, or one the agent made up
	// AppID is the app's own X-Request-Id, when its response carried one
	// other than ID: the client gets it, unchanged, and the agent's log
	// lines name the request by ID with this one beside it.
	AppID string
}

// LogAttrs are the attributes that name the exchange in the agent's log:
// request_id, and app_request_id when the app answered with an id of its
// own.
func (ex *Exchange) LogAttrs() []any {
	if ex.AppID != "" {
		return []any{"request_id", ex.ID, "app_request_id", ex.AppID}
	}
	return []any{"request_id", ex.ID}
}

// NewRequestID returns a random request id. It only has to be unique in
// logs, not secret: the runtime's generator is used, which costs no
// system call.
func NewRequestID() string {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// RequestID returns a request's id: the client's X-Request-Id when it sent
// one, once, and it is well-formed (wellFormedID), so that the id a proxy
// or client gave carries through to the agent's log and the app (which
// sees the client's headers); otherwise a new one.
func RequestID(r *http.Request) string {
	if ids := r.Header["X-Request-Id"]; len(ids) == 1 && wellFormedID(ids[0]) {
		return ids[0]
	}
	return NewRequestID()
}

// WellFormedID reports whether a client's X-Request-Id is taken as the
// request's id (see wellFormedID).
func WellFormedID(id string) bool { return wellFormedID(id) }

// wellFormedID reports whether an incoming request id is 1 to 128
// characters among letters, digits and -_.:+=/@ (UUIDs, hex, base64,
// the ids of the usual proxies): nothing a log line or header could
// trip on.
func wellFormedID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.:+=/@", c) >= 0) {
			return false
		}
	}
	return true
}

// RawPath returns the path of r's target exactly as the client sent it,
// without the query: what uvicorn gives an app as raw_path (net/http's
// EscapedPath is a re-encoding, which differs for bytes such as "{" or
// non-ASCII). An absolute-form target ("http://host/p?q") gives its path
// ("/p"; "" when it has none), "*" (OPTIONS *) gives "*". It allocates
// nothing.
func RawPath(r *http.Request) string {
	t := r.RequestURI
	if t == "" { // a request not read by a server
		return r.URL.EscapedPath()
	}
	if i := strings.IndexAny(t, "?#"); i >= 0 {
		t = t[:i]
	}
	if t == "" || t[0] == '/' || t == "*" {
		return t
	}
	if _, rest, ok := strings.Cut(t, "://"); ok { // absolute-form
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			return rest[i:]
		}
		return ""
	}
	return t
}

// TrimFragment removes a fragment ("#…") from r's target, as uvicorn's
// parser does: clients do not send one, but net/http keeps one it gets in
// the path or the query. Most requests have none: this costs a search.
func TrimFragment(r *http.Request) {
	i := strings.IndexByte(r.RequestURI, '#')
	if i < 0 {
		return
	}
	if u, err := url.ParseRequestURI(r.RequestURI[:i]); err == nil {
		r.URL = u
	}
}

// Head builds the REQUEST head of r.
func Head(r *http.Request, ex *Exchange) *message.RequestHead {
	return httpstream.RequestHead(r, ex.Path, ex.RawPath, ex.RootPath)
}

// ServeAny relays r as the program's interface needs: websockets are
// terminated here for ASGI programs, upgrades pass through as raw bytes to
// executables, everything else is Serve.
func ServeAny(w http.ResponseWriter, r *http.Request, ex *Exchange, iface string) {
	switch {
	case IsWebSocket(r) && iface == contract.InterfaceASGI:
		ServeWebSocket(w, r, ex)
	case IsUpgrade(r) && iface == contract.InterfaceExecutable:
		ServeUpgrade(w, r, ex)
	default:
		Serve(w, r, ex)
	}
}

// MaxHeaderBytes is the bound the agent's HTTP servers put on a request's
// line and header fields (http.Server.MaxHeaderBytes: net/http answers
// 431 beyond it, after reading at most 4 KiB more). A REQUEST head travels
// in one frame, at most the peer's max frame size (init announces 64
// KiB); 32 KiB, what nginx accepts by default (4 buffers of 8 KiB), keeps
// heads of the usual shape well inside it. A head that still encodes
// larger (the path is carried twice, decoded and raw) is refused by Serve
// with 431 before anything is sent.
const MaxHeaderBytes = 32 << 10

// bodyFailureWait bounds how long Serve waits, once the client's
// connection has failed, to learn whether the request body broke off.
const bodyFailureWait = 5 * time.Second

// Serve relays r to a new stream on ex.Session and writes the answer to w.
func Serve(w http.ResponseWriter, r *http.Request, ex *Exchange) {
	ctx, cancel := ex.limit(r)
	defer cancel()
	if len(r.TransferEncoding) > 0 {
		// net/http frames the body by its Transfer-Encoding and removes
		// both Transfer-Encoding and Content-Length, so a request that
		// carried both (which a proxy in front may have framed by its
		// Content-Length) looks like any chunked request. RFC 9112 6.1
		// requires closing the connection after answering such a request:
		// every request with a chunked body closes it. (Go's fix for
		// golang/go#80942 sets Request.Close for exactly that case.)
		w.Header().Set("Connection", "close")
	}
	head := Head(r, ex)
	noBody := r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody
	if ex.MaxBody > 0 && r.ContentLength > ex.MaxBody {
		Error(w, ex, http.StatusRequestEntityTooLarge, "request body too large", "content-length", r.ContentLength)
		return
	}
	st, err := ex.Session.Open(ctx, head, nil, noBody)
	if errors.Is(err, mux.ErrHeadTooLarge) {
		// Refused before sending: the VM's session is untouched.
		Error(w, ex, http.StatusRequestHeaderFieldsTooLarge, "request head too large", "err", err)
		return
	}
	if err != nil {
		openFailed(w, r, ctx, ex, err)
		return
	}
	var body *httpstream.BodyCopy
	if !noBody {
		body = httpstream.CopyBody(r.Body, st, ex.MaxBody)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		if ctx.Err() != nil {
			// A client that left, or the time limit: the app sees
			// http.disconnect, and a body still being copied stops.
			resetForContext(ctx, st)
		}
		if body != nil {
			// When the client's connection failed, its body did too:
			// wait for the copy to say how.
			var wait time.Duration
			if r.Context().Err() != nil {
				wait = bodyFailureWait
			}
			tooLarge, clientErr := body.Outcome(wait)
			switch {
			case tooLarge:
				Error(w, ex, http.StatusRequestEntityTooLarge, "request body too large", "limit", ex.MaxBody)
				return
			case clientErr != nil:
				BadRequestBody(w, ex, clientErr)
				return
			}
		}
		if timedOut(r, ctx) {
			answerTimeout(w, ex, st)
			return
		}
		if ctx.Err() != nil {
			resetForContext(ctx, st) // (done above unless ctx ended since)
			return
		}
		status, msg := statusFor(err)
		Error(w, ex, status, msg, "err", err)
		return
	}
	if err := checkResponseHead(&rh); err != nil {
		st.Reset(frame.CodeProtocol, "invalid response head: "+err.Error())
		Error(w, ex, http.StatusBadGateway, "the program sent an invalid response", "err", err)
		return
	}
	buf := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(buf)
	// Whatever arrived with the head goes out with it. A body that is
	// already complete (the common small response) is sent with a
	// Content-Length in one write, without chunking or extra flushes.
	n, err := st.TryRead(*buf)
	contentLength := ""
	if err == io.EOF && bodyAllowed(r.Method, int(rh.Status)) && !hasHeader(&rh, "content-length") {
		contentLength = strconv.Itoa(n)
	}
	writeHead(w, ex, &rh, contentLength)
	if err == io.EOF {
		if n > 0 {
			w.Write((*buf)[:n])
		}
		return
	}
	// The body streams from here on: a client that leaves, or the time
	// limit, resets the stream whatever Serve waits for. (Until now the
	// waits took ctx; a whole answer needs none of this.)
	stop := context.AfterFunc(ctx, func() { resetForContext(ctx, st) })
	defer stop()
	out := &streamWriter{w: w, st: st}
	out.flusher, _ = w.(http.Flusher)
	if n > 0 {
		if _, werr := out.Write((*buf)[:n]); werr != nil {
			st.Reset(frame.CodeCancel, "client went away")
			return
		}
	} else {
		out.flush()
	}
	if err == io.EOF {
		return
	}
	if err == nil {
		// The rest goes from the stream's own buffers to the client,
		// each run of bytes as it lies there (Stream.LendTo).
		_, err = st.LendTo(out)
	}
	switch {
	case out.err != nil:
		st.Reset(frame.CodeCancel, "client went away")
	case err != nil:
		brokeOff(ctx, ex, err)
	}
}

// streamWriter passes a streaming body to the client: each run of bytes
// is flushed at once unless more are already waiting in the stream, so
// that a chunk the app sent reaches the client as soon as it is here,
// and a long body goes in as few writes as it arrives in. It keeps the
// client's write error apart from the stream's.
type streamWriter struct {
	w       http.ResponseWriter
	flusher http.Flusher
	st      *mux.Stream
	err     error // the client's
}

func (sw *streamWriter) Write(p []byte) (int, error) {
	n, err := sw.w.Write(p)
	if err != nil {
		sw.err = err
		return n, err
	}
	if sw.st.Buffered() == 0 {
		sw.flush()
	}
	return n, nil
}

// flush sends what the client's connection holds, the head included.
func (sw *streamWriter) flush() {
	if sw.flusher != nil {
		sw.flusher.Flush()
	}
}

// limit returns r's context bounded by the exchange's time limit.
func (ex *Exchange) limit(r *http.Request) (context.Context, context.CancelFunc) {
	if ex.Timeout > 0 {
		return context.WithTimeout(r.Context(), ex.Timeout)
	}
	return r.Context(), func() {}
}

// timedOut reports whether ctx, r's context under the time limit, ended
// by the limit rather than by the client leaving.
func timedOut(r *http.Request, ctx context.Context) bool {
	return r.Context().Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// openFailed answers a stream that could not be opened: nothing when the
// client left meanwhile (e.g. while waiting for a free stream), 504 when
// the time limit ran out before the program could even be asked (all its
// streams busy, or its session still starting), else 502.
func openFailed(w http.ResponseWriter, r *http.Request, ctx context.Context, ex *Exchange, err error) {
	switch {
	case r.Context().Err() != nil:
	case timedOut(r, ctx):
		Error(w, ex, http.StatusGatewayTimeout, "the program did not answer in time", "timeout", ex.Timeout, "err", err)
	default:
		Error(w, ex, http.StatusBadGateway, "program unreachable", "err", err)
	}
}

// answerTimeout resets st, whose program did not answer within the time
// limit, with TIMEOUT and answers 504.
func answerTimeout(w http.ResponseWriter, ex *Exchange, st *mux.Stream) {
	st.Reset(frame.CodeTimeout, "request exceeded its time limit")
	Error(w, ex, http.StatusGatewayTimeout, "the program did not answer in time", "timeout", ex.Timeout)
}

// brokeOff ends a response whose body broke off with err: logged unless
// ctx ended (the client left, or the time limit, which said so already),
// and the HTTP response aborted so that the client sees it incomplete. It
// does not return.
func brokeOff(ctx context.Context, ex *Exchange, err error) {
	if ctx.Err() == nil && ex.Log != nil {
		ex.Log.Warn("response broke off", append(ex.LogAttrs(), "err", err)...)
	}
	panic(http.ErrAbortHandler)
}

// resetForContext resets st once ctx has ended: TIMEOUT past the time
// limit, CANCEL for a client that went away.
func resetForContext(ctx context.Context, st *mux.Stream) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		st.Reset(frame.CodeTimeout, "request exceeded its time limit")
		return
	}
	st.Reset(frame.CodeCancel, "client went away")
}

// BadRequestBody answers a request whose body could not be read: 400 (408
// when it was too slow), and the connection is closed, since where the
// next request would start on it is unknown.
func BadRequestBody(w http.ResponseWriter, ex *Exchange, err error) {
	w.Header().Set("Connection", "close")
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		Error(w, ex, http.StatusRequestTimeout, "the request body did not arrive in time", "err", err)
		return
	}
	Error(w, ex, http.StatusBadRequest, "malformed or incomplete request body", "err", err)
}

// bodyBuffers holds the buffers request bodies, and the first bytes of
// response bodies, are copied through. A response body that streams (one
// not whole with its head) is written from the stream's own buffers
// (Stream.LendTo): each write to the client moves what has arrived, up
// to a window's worth (256 KiB). (Copied through a buffer of its own, at
// 64 KiB a 1 MiB response took 26 writes and 10 futex wake-ups of the
// agent, at 256 KiB 9 and 5: strace, 8 connections.) Request bodies keep
// 64 KiB buffers (internal/httpstream): bigger ones there (and the
// bigger batches of frames they make) raised the agent's peak memory
// during four 10 MiB uploads, 6.7 MiB of growth against 4.1, for no gain
// the worker's own costs did not hide.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// bodyAllowed reports whether a response to method with status carries a
// body whose length the client should be told.
func bodyAllowed(method string, status int) bool {
	return method != http.MethodHead && status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// hasHeader reports whether the response head has a field called name
// (lower case).
func hasHeader(rh *message.ResponseHead, name string) bool {
	for _, f := range rh.Headers {
		if strings.EqualFold(string(f.Name), name) {
			return true
		}
	}
	return false
}

// statusFor maps a stream failure to an HTTP status and a short message.
func statusFor(err error) (int, string) {
	var serr *mux.StreamError
	if errors.As(err, &serr) {
		return StatusForReset(serr.Code)
	}
	return http.StatusBadGateway, "the program failed to answer"
}

// StatusForReset maps the code of a RESET that ended a stream before its
// response head to an HTTP status and a short message.
func StatusForReset(code uint32) (int, string) {
	switch code {
	case frame.CodeTimeout:
		return http.StatusGatewayTimeout, "the program did not answer in time"
	case frame.CodeBodyTooLarge:
		return http.StatusRequestEntityTooLarge, "request body too large"
	case frame.CodeUnavailable, frame.CodeRefusedStream:
		return http.StatusServiceUnavailable, "the program is not available"
	case frame.CodeWorkerLost:
		return http.StatusBadGateway, "the program crashed while answering"
	}
	return http.StatusBadGateway, "the program failed to answer"
}

// Error writes a short JSON error with the request id and logs the detail.
func Error(w http.ResponseWriter, ex *Exchange, status int, msg string, detail ...any) {
	if ex.Log != nil {
		ex.Log.Warn(msg, append(append(ex.LogAttrs(), "status", status), detail...)...)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Request-Id", ex.ID)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg, "request_id": ex.ID})
}
