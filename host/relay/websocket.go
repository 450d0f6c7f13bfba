package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/coder/websocket"

	"github.com/ferry-vm/ferry/internal/httphdr"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// MaxWebSocketMessage bounds one websocket message relayed either way.
const MaxWebSocketMessage = 16 << 20

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
func ServeWebSocket(w http.ResponseWriter, r *http.Request, rq *Request) {
	head := Head(r, rq)
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
	st, rh, switched := openSwitch(w, r, rq, head)
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
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		st.Reset(frame.CodeCancel, "client websocket handshake failed")
		return
	}
	c.SetReadLimit(MaxWebSocketMessage)
	wsCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, data, err := c.Read(wsCtx)
			if err != nil {
				if code := websocket.CloseStatus(err); code != -1 {
					var ce websocket.CloseError
					errors.As(err, &ce)
					_ = st.CloseWebSocket(uint32(code), ce.Reason)
				} else {
					st.Reset(frame.CodeCancel, "client went away")
				}
				return
			}
			if err := st.WriteMessage(typ == websocket.MessageText, data); err != nil {
				c.Close(websocket.StatusGoingAway, "program went away")
				return
			}
		}
	}()
	for {
		text, data, err := st.ReadMessage(MaxWebSocketMessage)
		if err != nil {
			var closed *mux.WSCloseError
			if errors.As(err, &closed) {
				c.Close(websocket.StatusCode(closed.Code), closed.Reason)
			} else {
				c.Close(websocket.StatusInternalError, "program failed")
			}
			break
		}
		typ := websocket.MessageBinary
		if text {
			typ = websocket.MessageText
		}
		if err := c.Write(wsCtx, typ, data); err != nil {
			st.Reset(frame.CodeCancel, "client went away")
			break
		}
	}
	cancel()
	<-done
}

// ServeUpgrade passes a protocol switch through as raw bytes (executable
// programs): the request goes as plain HTTP with its Upgrade headers; when
// the program answers 101 the client connection is taken over and bytes
// flow both ways in DATA frames.
func ServeUpgrade(w http.ResponseWriter, r *http.Request, rq *Request) {
	st, rh, switched := openSwitch(w, r, rq, Head(r, rq))
	if !switched {
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		st.Reset(frame.CodeCancel, "cannot take over the client connection")
		Error(w, rq, http.StatusInternalServerError, "upgrade not possible", "err", err)
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

// openSwitch opens a stream for a protocol switch and waits for the
// program's answer. Everything but a 101 is answered here: failures as JSON
// errors (a websocket closed before accept as 403), any other status as
// the program's own response. switched reports a 101.
func openSwitch(w http.ResponseWriter, r *http.Request, rq *Request, head *message.RequestHead) (*mux.Stream, *message.ResponseHead, bool) {
	ctx := r.Context()
	st, err := rq.Session.Open(ctx, head, nil, false)
	if err != nil {
		Error(w, rq, http.StatusBadGateway, "program unreachable", "err", err)
		return nil, nil, false
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		var denied *mux.WSCloseError
		if errors.As(err, &denied) {
			Error(w, rq, http.StatusForbidden, "websocket refused by the program", "code", denied.Code)
			return nil, nil, false
		}
		status, msg := statusFor(err)
		Error(w, rq, status, msg, "err", err)
		return nil, nil, false
	}
	if rh.Status != http.StatusSwitchingProtocols {
		// A refusal with a response of its own (websocket.http.response).
		writeHead(w, rq, &rh)
		io.Copy(flushWriter{w}, st)
		return nil, nil, false
	}
	return st, &rh, true
}

// writeHead writes a response head from the program.
func writeHead(w http.ResponseWriter, rq *Request, rh *message.ResponseHead) {
	for _, f := range rh.Headers {
		if name := string(f.Name); !httphdr.IsHopByHop(name) {
			w.Header().Add(name, string(f.Value))
		}
	}
	w.Header().Set("X-Request-Id", rq.ID)
	w.WriteHeader(int(rh.Status))
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
