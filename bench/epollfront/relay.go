package epollfront

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// next starts c's next request when its head and body have arrived and
// no request of c's is in flight.
func (l *loop) next(c *client) {
	if c.stream != 0 || c.closeAfter || c.fd < 0 {
		return // busy, or the connection ends after its last response
	}
	end := bytes.Index(c.in, []byte("\r\n\r\n"))
	if end < 0 {
		if len(c.in) > maxHead {
			l.fail(c, 431, "Request Header Fields Too Large")
		}
		return
	}
	if end > maxHead {
		l.fail(c, 431, "Request Header Fields Too Large")
		return
	}
	h := &l.head
	if len(c.out) >= maxUnwritten {
		return // a client that does not read its responses gets no more
	}
	length, closeAfter, expect, status, reason := l.parseHead(c, c.in[:end])
	if status != 0 {
		l.fail(c, status, reason)
		return
	}
	ch := l.pick()
	if ch.outstanding >= int(ch.peer.MaxStreams) || len(ch.out) >= maxBacklog {
		l.fail(c, 503, "Service Unavailable")
		return
	}
	if length > int(min(ch.peer.InitialWindow, ch.peer.MaxFrameSize)) {
		l.fail(c, 413, "Content Too Large") // the prototype sends a body in one DATA frame
		return
	}
	total := end + 4 + length
	if len(c.in) < total {
		if expect && !c.continued {
			c.out = append(c.out, "HTTP/1.1 100 Continue\r\n\r\n"...)
			c.continued = true
			l.mark(c)
		}
		return
	}
	id := ch.next
	ch.next += 2
	flags := frame.FlagFin
	if length > 0 {
		flags = 0
	}
	at := len(ch.out)
	ch.out = append(ch.out, make([]byte, frame.HeaderSize)...)
	ch.out = h.Append(ch.out)
	size := len(ch.out) - at - frame.HeaderSize
	if size > int(ch.peer.MaxFrameSize) {
		ch.out = ch.out[:at] // never sent: the id stays unused (SPEC.md §5.6)
		l.fail(c, 431, "Request Header Fields Too Large")
		return
	}
	frame.AppendHeader(ch.out[at:at], frame.Header{Type: frame.TypeRequest, Flags: flags, StreamID: id, Length: uint32(size)})
	if length > 0 {
		ch.out = appendFrame(ch.out, frame.TypeData, frame.FlagFin, id, c.in[end+4:total])
	}
	ch.dirty = true
	ch.streams[id] = c
	ch.outstanding++
	c.stream, c.on, c.closeAfter, c.continued = id, ch, closeAfter, false
	c.head, c.http10 = string(h.Method) == "HEAD", string(h.HTTPVersion) == "1.0"
	c.in = consume(c.in, total)
}

// pick returns the worker with the fewest streams in flight.
func (l *loop) pick() *channel {
	best := l.workers[0]
	for _, ch := range l.workers[1:] {
		if ch.outstanding < best.outstanding {
			best = ch
		}
	}
	return best
}

// parseHead fills l.head from a request's line and fields and returns the
// body's length, whether the connection closes after the response and
// whether the client expects 100 Continue, or an error status. It accepts
// a strict subset of RFC 9112: origin-form targets, no obsolete line
// folding, no transfer codings, one Content-Length.
func (l *loop) parseHead(c *client, head []byte) (length int, closeAfter, expect bool, status int, reason string) {
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	method, line, ok1 := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(line, []byte(" "))
	if !ok1 || !ok2 || !token(method) || len(target) == 0 || target[0] != '/' || bytes.IndexByte(target, ' ') >= 0 {
		return 0, false, false, 400, "Bad Request"
	}
	if string(version) != "HTTP/1.1" && string(version) != "HTTP/1.0" {
		return 0, false, false, 505, "HTTP Version Not Supported"
	}
	h := &l.head
	*h = message.RequestHead{HTTPVersion: version[5:], Method: method, Scheme: []byte("http"), Headers: h.Headers[:0],
		ClientHost: c.host, ClientPort: c.port, ServerHost: []byte("127.0.0.1"), ServerPort: l.port}
	h.RawPath, h.QueryString, _ = bytes.Cut(target, []byte("?"))
	path, err := url.PathUnescape(string(h.RawPath))
	if err != nil {
		return 0, false, false, 400, "Bad Request"
	}
	h.Path = []byte(path)
	closeAfter = string(version) == "HTTP/1.0"
	length = -1
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(field, []byte(":"))
		if !ok || !token(name) {
			return 0, false, false, 400, "Bad Request"
		}
		name, value = bytes.ToLower(name), bytes.Trim(value, " \t")
		if bytes.ContainsAny(value, "\r\n\x00") {
			return 0, false, false, 400, "Bad Request" // a bare CR or LF, or a NUL, in a field
		}
		switch string(name) {
		case "content-length":
			n, err := strconv.ParseUint(string(value), 10, 31)
			if err != nil || length >= 0 {
				return 0, false, false, 400, "Bad Request"
			}
			length = int(n)
		case "transfer-encoding", "upgrade":
			return 0, false, false, 501, "Not Implemented"
		case "connection":
			for _, option := range bytes.Split(value, []byte(",")) {
				if bytes.EqualFold(bytes.TrimSpace(option), []byte("close")) {
					closeAfter = true
				}
			}
		case "expect":
			expect = bytes.EqualFold(value, []byte("100-continue"))
		}
		h.Headers = append(h.Headers, message.HeaderField{Name: name, Value: value})
	}
	return max(length, 0), closeAfter, expect, 0, ""
}

// token reports whether b is a non-empty RFC 9110 token.
func token(b []byte) bool {
	for _, x := range b {
		if x <= ' ' || x >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), x) >= 0 {
			return false
		}
	}
	return len(b) > 0
}

// readChannel reads what a worker sent and handles each whole frame.
func (l *loop) readChannel(ch *channel) error {
	n, err := unix.Read(ch.data, l.buf)
	if err == unix.EAGAIN || err == unix.EINTR {
		return nil
	}
	if n <= 0 {
		return fmt.Errorf("a worker's data channel ended (%v)", err)
	}
	ch.in = append(ch.in, l.buf[:n]...)
	p := ch.in
	for len(p) >= frame.HeaderSize {
		fh := frame.ParseHeader(p)
		if err := fh.Validate(maxFrameSize); err != nil {
			return fmt.Errorf("a worker sent a bad frame: %w", err)
		}
		if len(p) < frame.HeaderSize+int(fh.Length) {
			break
		}
		l.frame(ch, fh, p[frame.HeaderSize:frame.HeaderSize+int(fh.Length)])
		p = p[frame.HeaderSize+int(fh.Length):]
	}
	ch.in = append(ch.in[:0], p...)
	return nil
}

// frame handles one frame from a worker.
func (l *loop) frame(ch *channel, fh frame.Header, payload []byte) {
	switch fh.Type {
	case frame.TypePing:
		if !fh.Has(frame.FlagAck) {
			ch.out = appendFrame(ch.out, frame.TypePing, frame.FlagAck, 0, payload)
			ch.dirty = true
		}
		return
	case frame.TypeHello, frame.TypeGoAway, frame.TypeLog, frame.TypeWindowUpdate:
		return // request bodies fit the initial window; the prototype does not drain
	}
	c := ch.streams[fh.StreamID]
	if c == nil {
		return // a stream the client dropped
	}
	switch fh.Type {
	case frame.TypeResponse:
		if err := l.response.Unmarshal(payload); err != nil {
			l.reset(c, frame.CodeProtocol)
			l.fail(c, 502, "Bad Gateway")
			return
		}
		l.writeHead(c, fh.Has(frame.FlagFin))
	case frame.TypeData:
		if fh.Has(frame.FlagCompressed) {
			l.reset(c, frame.CodeCompression) // not negotiated: the front announces none
			l.drop(c)
			return
		}
		if c.noBody {
			// Discarded, as net/http does for HEAD: the credit still goes back.
		} else if c.chunked && len(payload) > 0 {
			c.out = strconv.AppendUint(c.out, uint64(len(payload)), 16)
			c.out = append(c.out, "\r\n"...)
			c.out = append(c.out, payload...)
			c.out = append(c.out, "\r\n"...)
		} else {
			c.out = append(c.out, payload...)
		}
		c.owed += uint32(len(payload))
	case frame.TypeEnd:
	case frame.TypeReset:
		l.finish(c)
		l.drop(c)
		return
	default:
		l.reset(c, frame.CodeProtocol)
		l.drop(c)
		return
	}
	l.mark(c)
	if fh.Has(frame.FlagFin) || fh.Type == frame.TypeEnd {
		if c.chunked {
			c.out = append(c.out, "0\r\n\r\n"...)
		}
		l.finish(c) // flush starts a pipelined request, if one is in
	}
}

// writeHead writes the response's status line and fields; a response
// without a Content-Length that has a body is sent chunked, and the body
// of a response to HEAD, or of a 204 or 304, is not sent (RFC 9110 §6.4.1).
func (l *loop) writeHead(c *client, fin bool) {
	r := &l.response
	c.out = append(c.out, "HTTP/1.1 "...)
	c.out = strconv.AppendUint(c.out, uint64(r.Status), 10)
	c.out = append(c.out, ' ')
	c.out = append(c.out, http.StatusText(int(r.Status))...)
	c.out = append(c.out, "\r\n"...)
	c.noBody = c.head || r.Status == 204 || r.Status == 304
	c.chunked = !fin && !c.noBody && !c.http10 // HTTP/1.0: the close ends the body
	for _, f := range r.Headers {
		if bytes.EqualFold(f.Name, []byte("content-length")) {
			c.chunked = false
		}
		c.out = append(c.out, f.Name...)
		c.out = append(c.out, ": "...)
		c.out = append(c.out, f.Value...)
		c.out = append(c.out, "\r\n"...)
	}
	c.out = append(c.out, "date: "...)
	c.out = append(c.out, l.now()...)
	c.out = append(c.out, "\r\n"...)
	if c.chunked {
		c.out = append(c.out, "transfer-encoding: chunked\r\n"...)
	}
	if c.closeAfter {
		c.out = append(c.out, "connection: close\r\n"...)
	}
	c.out = append(c.out, "\r\n"...)
}

// now is the Date field's value, formatted once a second.
func (l *loop) now() []byte {
	t := time.Now()
	if s := t.Unix(); s != l.dateAt {
		l.dateAt = s
		l.date = t.UTC().AppendFormat(l.date[:0], "Mon, 02 Jan 2006 15:04:05 GMT")
	}
	return l.date
}

// flush writes each client's and then each worker's pending bytes once,
// and returns response credit for what the clients took.
func (l *loop) flush() error {
	for i := 0; i < len(l.dirty); i++ { // next may mark a client again
		c := l.dirty[i]
		c.dirty = false
		if c.fd < 0 {
			continue
		}
		if len(c.out) > 0 {
			n, err := unix.Write(c.fd, c.out)
			if err != nil && err != unix.EAGAIN {
				l.drop(c)
				continue
			}
			c.out = consume(c.out, n)
		}
		if len(c.out) == 0 && c.closeAfter && c.stream == 0 {
			l.drop(c)
			continue
		}
		// The one place a request starts: after a read, after the
		// previous response, or once a client that did not read has.
		l.next(c)
		if len(c.out) == 0 && c.owed > 0 && c.stream != 0 {
			var credit [4]byte
			credit[0], credit[1], credit[2], credit[3] = byte(c.owed>>24), byte(c.owed>>16), byte(c.owed>>8), byte(c.owed)
			c.on.out = appendFrame(c.on.out, frame.TypeWindowUpdate, 0, c.stream, credit[:])
			c.on.dirty = true
			c.owed = 0
		}
		if in, out := l.mayRead(c), len(c.out) > 0; in != c.readingIn || out != c.pollingOut {
			c.readingIn, c.pollingOut = in, out
			l.watch(unix.EPOLL_CTL_MOD, c.fd, in, out)
		}
	}
	l.dirty = l.dirty[:0]
	for _, ch := range l.workers {
		if !ch.dirty {
			continue
		}
		ch.dirty = false
		if len(ch.out) > 0 {
			n, err := unix.Write(ch.data, ch.out)
			if err != nil && err != unix.EAGAIN {
				return fmt.Errorf("writing to a worker: %w", err)
			}
			ch.out = consume(ch.out, n)
		}
		if want := len(ch.out) > 0; want != ch.pollingOut {
			ch.pollingOut = want
			if err := l.watch(unix.EPOLL_CTL_MOD, ch.data, true, want); err != nil {
				return err
			}
		}
	}
	return nil
}

// consume drops the first n bytes of b without moving the rest (a
// pipelining client would otherwise cost a copy of all it sent per
// request); append reallocates when the front of the array is used up.
func consume(b []byte, n int) []byte {
	if n <= 0 {
		return b
	}
	if n >= len(b) {
		return b[:0]
	}
	return b[n:]
}
