package relay

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/ferry-vm/ferry/internal/httphdr"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// IsUpgrade reports whether r asks to switch protocols.
func IsUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && httphdr.HasToken(r.Header.Get("Connection"), "upgrade")
}

// IsWebSocket reports whether r opens a websocket.
func IsWebSocket(r *http.Request) bool {
	return IsUpgrade(r) && strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// ServeWebSocket terminates a client websocket here and carries its
// messages over a websocket stream (ASGI programs): the app accepts (101,
// subprotocol, headers) or denies (403, or its own HTTP response) before
// the client's handshake is answered; closes pass both ways with their code
// and reason.
func ServeWebSocket(w http.ResponseWriter, r *http.Request, ex *Exchange) {
	if status, reason := checkHandshake(r); reason != "" {
		refuseHandshake(w, ex, status, reason)
		return
	}
	head := Head(r, ex)
	head.Kind = message.KindWebSocket
	head.Scheme = []byte("ws")
	if r.TLS != nil {
		head.Scheme = []byte("wss")
	}
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				head.Subprotocols = append(head.Subprotocols, []byte(p))
			}
		}
	}
	st, rh, switched := openSwitch(w, r, ex, head)
	if !switched {
		return
	}
	for _, f := range rh.Headers {
		if name := string(f.Name); !httphdr.IsHopByHop(name) && !strings.HasPrefix(name, "sec-websocket-") {
			w.Header().Add(name, string(f.Value))
		}
	}
	opts := &websocket.AcceptOptions{InsecureSkipVerify: true} // origin checks are the app's business
	if len(rh.Subprotocol) > 0 {
		opts.Subprotocols = []string{string(rh.Subprotocol)}
	}
	hw := &hijackRecorder{ResponseWriter: w}
	if !r.ProtoAtLeast(1, 1) {
		// uvicorn opens an HTTP/1.0 client's valid handshake as HTTP/1.1
		// (the app has accepted it already); the library refuses 1.0.
		r11 := *r
		r11.Proto, r11.ProtoMajor, r11.ProtoMinor = "HTTP/1.1", 1, 1
		r = &r11
	}
	c, err := websocket.Accept(hw, r, opts)
	if err != nil {
		st.Reset(frame.CodeCancel, "client websocket handshake failed")
		return
	}
	// A client message over the limit closes the websocket with 1009.
	// Messages cross part by part, so this bounds no buffer here; the
	// program's messages reach the client however large.
	c.SetReadLimit(contract.MaxWebSocketMessage)
	wsCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		clientToProgram(wsCtx, c, st, hw.conn, stop)
	}()
	closed := programToClient(wsCtx, c, st)
	// The program closed or failed: the client's messages are not
	// wanted any more. A part waiting for window gives up (the write
	// deadline), and the close handshake with the client drops the rest.
	close(stop)
	st.SetWriteDeadline(time.Now())
	if closed != nil {
		c.Close(websocket.StatusCode(closed.Code), closed.Reason)
	} else {
		c.Close(websocket.StatusInternalError, "program failed")
	}
	cancel()
	<-done
	if closed != nil {
		// The answer to the program's close, unless the client's own
		// close already was (then this is ErrWriteClosed).
		_ = st.CloseWebSocket(closed.Code, closed.Reason)
	}
}

// checkHandshake checks a websocket opening handshake before the app
// sees it, as uvicorn does (its websockets library's check_request, RFC
// 6455 §4.2.1): a GET, one Upgrade field that is websocket, one
// Sec-WebSocket-Key of 16 bytes in base64, one Sec-WebSocket-Version that
// is 13. It returns the status and the reason of a refusal, in the
// library's words; "" for a valid handshake. (The Connection field's
// upgrade made it a websocket request.)
func checkHandshake(r *http.Request) (status int, reason string) {
	if r.Method != http.MethodGet {
		return http.StatusBadRequest, "did not receive a valid HTTP request"
	}
	if up := r.Header["Upgrade"]; len(up) != 1 || !strings.EqualFold(strings.Trim(up[0], " \t"), "websocket") {
		return http.StatusUpgradeRequired, "invalid Upgrade header: " + strings.Join(up, ", ")
	}
	one := func(name string) (string, string) {
		switch v := r.Header.Values(name); {
		case len(v) == 0:
			return "", "missing " + name + " header"
		case len(v) > 1:
			return "", "invalid " + name + " header: more than one " + name + " header found"
		case v[0] == "":
			return "", "empty " + name + " header"
		default:
			return v[0], ""
		}
	}
	key, reason := one("Sec-WebSocket-Key")
	if reason != "" {
		return http.StatusBadRequest, reason
	}
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
		return http.StatusBadRequest, "invalid Sec-WebSocket-Key header: " + key
	}
	version, reason := one("Sec-WebSocket-Version")
	if reason != "" {
		return http.StatusBadRequest, reason
	}
	if version != "13" {
		return http.StatusBadRequest, "invalid Sec-WebSocket-Version header: " + version
	}
	return 0, ""
}

// refuseHandshake answers an invalid websocket handshake as uvicorn does:
// status, a plain-text reason, and the connection closed (426 names the
// protocol to upgrade to).
func refuseHandshake(w http.ResponseWriter, ex *Exchange, status int, reason string) {
	if ex.Log != nil {
		ex.Log.Info("invalid websocket handshake", append(ex.LogAttrs(), "status", status, "reason", reason)...)
	}
	body := "Failed to open a WebSocket connection: " + reason + ".\n"
	h := w.Header()
	if status == http.StatusUpgradeRequired {
		h.Set("Upgrade", "websocket")
		body += "\nYou cannot access a WebSocket server directly with a browser. You need a WebSocket client.\n"
	}
	h.Set("Content-Type", "text/plain")
	h.Set("Connection", "close")
	h.Set("X-Request-Id", ex.ID)
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// wsLivenessInterval is how often a client message waiting for window (the
// program is not receiving) checks that its client is still connected.
const wsLivenessInterval = 2 * time.Second

// clientToProgram carries the client's messages to the program part by
// part as they arrive, each part at most one buffer, so a message waiting
// for a program that does not receive holds a window and a buffer here,
// and the client's TCP connection is what waits. A client close is passed
// on as WS_CLOSE, a client that leaves (or exceeds contract.MaxWebSocketMessage:
// 1009) ends the stream. Once stop is closed the program's side has ended:
// nothing more is passed on.
func clientToProgram(ctx context.Context, c *websocket.Conn, st *mux.Stream, conn net.Conn, stop <-chan struct{}) {
	for {
		typ, r, err := c.Reader(ctx)
		var streamErr error
		if err == nil {
			buf := bodyBuffers.Get().(*[]byte)
			err, streamErr = sendMessage(st, typ == websocket.MessageText, r, *buf, conn, stop)
			bodyBuffers.Put(buf)
			if err == nil && streamErr == nil {
				continue
			}
		}
		switch {
		case streamErr != nil:
			// The program's side failed or ended: programToClient sees it.
		case errors.Is(err, errClientGone):
			st.Reset(frame.CodeCancel, "client went away")
			c.CloseNow()
		case websocket.CloseStatus(err) != -1:
			var ce websocket.CloseError
			errors.As(err, &ce)
			_ = st.CloseWebSocket(uint32(ce.Code), ce.Reason)
		case isStopped(stop):
			// The read failed because the program's close ended the
			// connection: the answer is ServeWebSocket's.
		case errors.Is(err, websocket.ErrMessageTooBig):
			_ = st.CloseWebSocket(uint32(websocket.StatusMessageTooBig), "message too big")
		default:
			st.Reset(frame.CodeCancel, "client went away")
		}
		return
	}
}

// errClientGone reports a client connection closed while its message
// waited for window.
var errClientGone = errors.New("relay: client went away")

// sendMessage copies one client message from r to st in parts of at most
// len(buf) bytes. It returns what failed, if anything: reading the
// message from the client (clientErr, errClientGone when the client left
// while the message waited for window) or writing it to the stream
// (streamErr).
func sendMessage(st *mux.Stream, text bool, r io.Reader, buf []byte, conn net.Conn, stop <-chan struct{}) (clientErr, streamErr error) {
	for {
		// A part is sent when the buffer is full or the message complete:
		// the app receives a message only whole, so waiting for more of it
		// delays nothing.
		n, err := io.ReadFull(r, buf)
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			return err, nil
		}
		p := buf[:n]
		for first := true; first || len(p) > 0; first = false {
			if isStopped(stop) {
				return nil, mux.ErrWriteClosed
			}
			st.SetWriteDeadline(time.Now().Add(wsLivenessInterval))
			n, err := st.WriteFragment(text, !last, p)
			p = p[n:]
			if err == nil {
				break
			}
			if !errors.Is(err, mux.ErrTimeout) || isStopped(stop) {
				return nil, err
			}
			if clientGone(conn) {
				return errClientGone, nil
			}
		}
		if last {
			return nil, nil
		}
	}
}

// programToClient carries the program's messages to the client part by
// part as they arrive, until the program closes (returned) or fails (nil).
func programToClient(ctx context.Context, c *websocket.Conn, st *mux.Stream) *mux.WSCloseError {
	var buf *[]byte
	defer func() {
		if buf != nil {
			bodyBuffers.Put(buf)
		}
	}()
	var w io.WriteCloser // the client message being written, after its first part
	for {
		var p []byte
		if buf != nil {
			p = *buf
		}
		n, text, more, err := st.ReadFragment(p)
		if err != nil {
			var closed *mux.WSCloseError
			if errors.As(err, &closed) {
				return closed
			}
			return nil
		}
		if buf == nil {
			// A message is arriving: now it needs a buffer.
			buf = bodyBuffers.Get().(*[]byte)
			continue
		}
		typ := websocket.MessageBinary
		if text {
			typ = websocket.MessageText
		}
		switch {
		case w == nil && !more:
			// A message in one part: one frame.
			err = c.Write(ctx, typ, (*buf)[:n])
		case w == nil:
			if w, err = c.Writer(ctx, typ); err == nil {
				_, err = w.Write((*buf)[:n])
			}
		default:
			if _, err = w.Write((*buf)[:n]); err == nil && !more {
				err = w.Close()
				w = nil
			}
		}
		if err != nil {
			st.Reset(frame.CodeCancel, "client went away")
			return nil
		}
		if !more {
			bodyBuffers.Put(buf)
			buf = nil
		}
	}
}

// isStopped reports whether stop is closed.
func isStopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// hijackRecorder keeps the connection websocket.Accept takes over, so that
// a client that leaves can be noticed while nothing reads from it.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

// Hijack takes over the connection and records it.
func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	h.conn = c
	return c, brw, err
}

// Unwrap gives http.ResponseController the writer underneath.
func (h *hijackRecorder) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// ServeUpgrade passes a protocol switch through as raw bytes (executable
// programs): the request goes as plain HTTP with its Upgrade headers; when
// the program answers 101 the client connection is taken over and bytes
// flow both ways in DATA frames.
func ServeUpgrade(w http.ResponseWriter, r *http.Request, ex *Exchange) {
	st, rh, switched := openSwitch(w, r, ex, Head(r, ex))
	if !switched {
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		st.Reset(frame.CodeCancel, "cannot take over the client connection")
		Error(w, ex, http.StatusInternalServerError, "upgrade not possible", "err", err)
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\n")
	for _, f := range rh.Headers {
		fmt.Fprintf(brw, "%s: %s\r\n", f.Name, f.Value)
	}
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		st.Reset(frame.CodeCancel, "client went away")
		return
	}
	recordSwitch(w)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var src io.Reader = conn
		if brw.Reader.Buffered() > 0 {
			src = io.MultiReader(io.LimitReader(brw.Reader, int64(brw.Reader.Buffered())), conn)
		}
		if _, err := io.Copy(st, src); err != nil {
			st.Reset(frame.CodeCancel, "client went away")
			return
		}
		_ = st.CloseWrite()
	}()
	_, _ = io.Copy(conn, st)
	if tc, ok := conn.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	<-done
}

// recordSwitch tells the status recorder among w's wrappers, if any (the
// metrics'), that the answer was 101 Switching Protocols: it was written
// on the hijacked connection, where WriteHeader does not see it.
func recordSwitch(w http.ResponseWriter) {
	for {
		if s, ok := w.(interface{ Switched() }); ok {
			s.Switched()
			return
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}

// openSwitch opens a stream for a protocol switch and waits for the
// program's answer. Everything but a 101 is answered here: failures as JSON
// errors (a websocket closed before accept as 403), any other status as
// the program's own response. switched reports a 101. The route's time
// limit bounds the wait for the answer and a refusal's body, not a
// connection once switched; a client that leaves before the answer gets
// none.
func openSwitch(w http.ResponseWriter, r *http.Request, ex *Exchange, head *message.RequestHead) (*mux.Stream, *message.ResponseHead, bool) {
	ctx, cancel := ex.limit(r)
	defer cancel()
	st, err := ex.Session.Open(ctx, head, nil, false)
	if err != nil {
		openFailed(w, r, ctx, ex, err)
		return nil, nil, false
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		if timedOut(r, ctx) {
			answerTimeout(w, ex, st)
			return nil, nil, false
		}
		// Nothing more goes either way: the stream ends here (with CANCEL
		// if the program has not finished), or it stays open, holding
		// init's relay, until the session ends.
		st.Close()
		if ctx.Err() != nil {
			return nil, nil, false // the client left before the answer: nobody to answer
		}
		var denied *mux.WSCloseError
		if errors.As(err, &denied) {
			// As uvicorn answers it: 403, no body, the connection closed.
			if ex.Log != nil {
				ex.Log.Info("websocket refused by the program", append(ex.LogAttrs(), "code", denied.Code)...)
			}
			w.Header().Set("Connection", "close")
			w.Header().Set("X-Request-Id", ex.ID)
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusForbidden)
			return nil, nil, false
		}
		status, msg := statusFor(err)
		Error(w, ex, status, msg, "err", err)
		return nil, nil, false
	}
	if rh.Status != http.StatusSwitchingProtocols {
		// A refusal with a response of its own (websocket.http.response,
		// or any answer to an upgrade an executable does not take), held
		// to the same rules as any response. A client that leaves, or
		// the time limit, ends a body that streams on.
		if err := checkResponseHead(&rh); err != nil {
			st.Reset(frame.CodeProtocol, "invalid response head: "+err.Error())
			Error(w, ex, http.StatusBadGateway, "the program sent an invalid response", "err", err)
			return nil, nil, false
		}
		writeHead(w, ex, &rh, "")
		stop := context.AfterFunc(ctx, func() { resetForContext(ctx, st) })
		_, err := io.Copy(flushWriter{w}, st)
		stop()
		st.Close()
		if err != nil {
			brokeOff(ctx, ex, err)
		}
		return nil, nil, false
	}
	return st, &rh, true
}

// flushWriter flushes after every write, so streamed bodies stream.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}
