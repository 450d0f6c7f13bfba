// Package forward carries a stream from one session to another, frame
// payloads as they are: init's host session to an ASGI worker's session
// and back. It is the only user of mux's pass-through twins (OpenRaw,
// ReadResponseRaw, WriteResponseRaw).
//
// It is the fallback path (protocol/SPEC.md §11): where the host talks to
// the workers directly over their data channels (the sandbox), init
// relays only the ASGI streams that reach it while the host holds no
// worker session; over virtio-serial (qemu), which carries one connection,
// it relays every ASGI request.
package forward

import (
	"context"
	"errors"
	"io"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// LostFunc explains why a peer stream failed when its whole session did
// (the worker died): it returns the code and message for the host.
type LostFunc func() (code uint32, message string)

// Open opens a stream on sess carrying host's REQUEST head and the body
// bytes that already arrived with it, so that a short request crosses in
// one write.
func Open(ctx context.Context, sess *mux.Session, host *mux.Stream) (*mux.Stream, error) {
	buf := app.CopyBuffer()
	defer app.ReturnCopyBuffer(buf)
	n, err := host.TryRead(*buf)
	end := err == io.EOF
	if err != nil && !end {
		return nil, err
	}
	if end {
		if tr, _ := host.Trailers(); len(tr) > 0 {
			// Trailers need an END frame of their own.
			peer, err := sess.OpenRaw(ctx, host.Head(), (*buf)[:n], false)
			if err == nil {
				err = peer.CloseWriteTrailers(tr)
			}
			return peer, err
		}
	}
	return sess.OpenRaw(ctx, host.Head(), (*buf)[:n], end)
}

// Stream carries a stream between the host and a peer stream opened with
// Open (a worker's), both directions at once, until both are done:
// request body or websocket messages toward the peer, the response head,
// body, trailers or websocket messages back. A reset on either side is
// passed to the other; a peer lost with its session is reported to the host
// with lost's code and message.
func Stream(host, peer *mux.Stream, lost LostFunc) {
	kind, err := message.PeekRequestKind(host.Head())
	if err != nil {
		host.Reset(frame.CodeProtocol, "malformed request head: "+err.Error())
		peer.Reset(frame.CodeCancel, "malformed request head")
		return
	}
	ws := kind == message.KindWebSocket
	respDone := make(chan struct{})
	reqDone := make(chan struct{})
	go func() {
		defer close(reqDone)
		if ws {
			relayFragments(host, peer, nil, respDone)
		} else {
			relayRequestBody(host, peer, respDone)
		}
	}()
	if ws {
		// The host's reset (the client left) must reach the peer even
		// while the relay toward it waits for window that the app, not
		// receiving, never returns.
		go func() {
			select {
			case <-host.Done():
				if host.Err() != nil {
					peer.Reset(frame.CodeCancel, "client went away")
				}
			case <-reqDone:
			}
		}()
	}
	relayResponse(host, peer, ws, lost)
	close(respDone)
	<-reqDone
}

// relayRequestBody copies the host's request body to the peer, then waits
// until the response is relayed, passing on a host reset (the client left)
// as CANCEL so the app sees http.disconnect.
func relayRequestBody(host, peer *mux.Stream, respDone <-chan struct{}) {
	if _, err := host.TryRead(nil); err == io.EOF {
		// The whole request has arrived (a GET: with its head), so no
		// copy buffer is held while the response is relayed. The peer's
		// side is ended here unless Open did (then this fails
		// harmlessly).
		tr, _ := host.Trailers()
		_ = peer.CloseWriteTrailers(tr)
	} else {
		copyRequestBody(host, peer, respDone)
	}
	select {
	case <-respDone:
	case <-host.Done():
		if host.Err() != nil {
			peer.Reset(frame.CodeCancel, "client went away")
		}
	}
}

// copyRequestBody copies the rest of the host's request body to the peer
// and ends the peer's side with the host's trailers.
func copyRequestBody(host, peer *mux.Stream, respDone <-chan struct{}) {
	buf := app.CopyBuffer()
	defer app.ReturnCopyBuffer(buf)
	for {
		n, err := host.Read(*buf)
		if n > 0 {
			if _, werr := peer.Write((*buf)[:n]); werr != nil {
				// The peer stopped reading (response complete, or reset):
				// once the response is through, tell the host likewise.
				<-respDone
				host.Reset(frame.CodeNoError, "request body not needed")
				return
			}
		}
		if err == io.EOF {
			tr, _ := host.Trailers()
			_ = peer.CloseWriteTrailers(tr)
			return
		}
		if err != nil {
			peer.Reset(frame.CodeCancel, "client went away")
			return
		}
	}
}

// relayResponse waits for the peer's answer and carries it to the host.
func relayResponse(host, peer *mux.Stream, ws bool, lost LostFunc) {
	head, err := peer.ReadResponseRaw(context.Background())
	if err != nil {
		var denied *mux.WSCloseError
		if errors.As(err, &denied) {
			_ = host.CloseWebSocket(denied.Code, denied.Reason)
			return
		}
		resetFromPeer(host, err, lost)
		return
	}
	var resp message.ResponseHead
	if ws {
		if err := resp.Unmarshal(head); err != nil {
			host.Reset(frame.CodeProtocol, "malformed response head from the app")
			peer.Reset(frame.CodeProtocol, "malformed response head")
			return
		}
	}
	if ws && resp.Status == 101 {
		if err := host.WriteResponseRaw(head, nil, false); err != nil {
			peer.Reset(frame.CodeCancel, "client went away")
			return
		}
		relayFragments(peer, host, lost, nil)
		return
	}
	buf := app.CopyBuffer()
	defer app.ReturnCopyBuffer(buf)
	// The head goes out with whatever body arrived with it.
	n, err := peer.TryRead(*buf)
	end := err == io.EOF
	if err != nil && !end {
		resetFromPeer(host, err, lost)
		return
	}
	tr, _ := peer.Trailers()
	if werr := host.WriteResponseRaw(head, (*buf)[:n], end && len(tr) == 0); werr != nil {
		if errors.Is(werr, mux.ErrHeadTooLarge) {
			// Larger than the host's frames: a 502 for this request only.
			host.Reset(frame.CodeAppError, "the app's response head is too large: "+werr.Error())
			peer.Reset(frame.CodeCancel, "response head too large for the host")
			return
		}
		peer.Reset(frame.CodeCancel, "client went away")
		return
	}
	if end {
		if len(tr) > 0 {
			_ = host.CloseWriteTrailers(tr)
		}
		return
	}
	for {
		n, err := peer.Read(*buf)
		if n > 0 {
			if _, werr := host.Write((*buf)[:n]); werr != nil {
				peer.Reset(frame.CodeCancel, "client went away")
				return
			}
		}
		if err == io.EOF {
			tr, _ := peer.Trailers()
			_ = host.CloseWriteTrailers(tr)
			return
		}
		if err != nil {
			resetFromPeer(host, err, lost)
			return
		}
	}
}

// relayFragments copies websocket messages from src to dst part by part
// as they arrive, never a whole message: what crosses is bounded by the
// windows of the two streams and one buffer, taken only while a message
// is in transit. When src closes, dst is closed with the same code and
// reason. When dst stops taking messages, src is reset once otherDone is
// closed (the other direction has carried dst's close or failure first);
// a nil otherDone resets it at once.
func relayFragments(src, dst *mux.Stream, lost LostFunc, otherDone <-chan struct{}) {
	var buf *[]byte
	defer func() {
		if buf != nil {
			app.ReturnCopyBuffer(buf)
		}
	}()
	for {
		var p []byte
		if buf != nil {
			p = *buf
		}
		n, text, more, err := src.ReadFragment(p)
		if err != nil {
			var closed *mux.WSCloseError
			switch {
			case errors.As(err, &closed):
				_ = dst.CloseWebSocket(closed.Code, closed.Reason)
			case lost != nil:
				resetFromPeer(dst, err, lost)
			default:
				dst.Reset(frame.CodeCancel, "client went away")
			}
			return
		}
		if buf == nil {
			// A message is arriving (p was empty: nothing was consumed).
			buf = app.CopyBuffer()
			continue
		}
		if _, err := dst.WriteFragment(text, more, (*buf)[:n]); err != nil {
			if otherDone != nil {
				<-otherDone
			}
			src.Reset(frame.CodeCancel, "other side went away")
			return
		}
		if !more {
			app.ReturnCopyBuffer(buf)
			buf = nil
		}
	}
}

// resetFromPeer passes a peer stream's failure to the host: the peer's own
// reset as it is, a lost session as lost says.
func resetFromPeer(host *mux.Stream, err error, lost LostFunc) {
	var serr *mux.StreamError
	if errors.As(err, &serr) && serr.Remote {
		host.Reset(serr.Code, serr.Message)
		return
	}
	if lost != nil {
		code, msg := lost()
		host.Reset(code, msg)
		return
	}
	host.Reset(frame.CodeInternal, err.Error())
}
