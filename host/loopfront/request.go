package loopfront

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/host/relay"
	"github.com/ferry-vm/ferry/internal/httphdr"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// Stream codes the loop resets with.
const (
	codeCancel  = frame.CodeCancel
	codeTimeout = frame.CodeTimeout
)

// statusClientClosed is what the metrics record for a request whose
// client left before it was answered.
const statusClientClosed = front.StatusClientClosed

// request is the request of a client the loop relays.
type request struct {
	stream uint32
	on     *channel
	inst   *lifecycle.Instance
	lim    *front.Limiter
	id     string // the request's id (X-Request-Id)
	appID  string // the app's own id, when it sent another
	method string
	path   string // as the metrics record it (the whole path)
	target front.Target
	start  time.Time
	isHead bool

	deadline int64 // the program's time limit, on the loop's clock; 0: none
	// The request body still to send, the credit the worker gave for it
	// and when it last moved.
	bodyLeft int64
	window   int64
	bodyAt   int64

	gotHead bool   // the RESPONSE arrived
	headOut []byte // the response's status line and fields, framing to come
	// connection is the app's Connection fields, sent unless the
	// connection closes after the response.
	connection []byte
	waiting    bool   // its head is not written yet (sendHeads)
	pending    []byte // body that arrived with the head
	stash      []byte // small chunks coalesced while the client is behind (writeBody)
	headSent   bool   // the head is in the client's output
	status     int
	noBody     bool  // HEAD, 204 or 304: the body is not sent
	chunked    bool  // the body is sent with chunked coding
	declared   int64 // the app's Content-Length; -1: none
	sent       int64 // body bytes taken from the worker
	dropped    int64 // body bytes of a HEAD response, not sent
	// Response flow control: received DATA, credit returned, and credit
	// owed once the client has taken what it holds.
	received, credited, owed int64

	finished bool // the worker's side ended
	reset    bool // the loop reset the stream
}

// next starts c's next request, when its head is whole and the loop may
// serve it, or hands c to the net/http server.
func (l *loop) next(c *client) {
	if c.discard > 0 { // the unread rest of the previous request's body
		n := min(c.discard, int64(c.in.len()))
		c.in.consume(int(n))
		if c.discard -= n; c.discard > 0 {
			return
		}
		c.since = l.now()
	}
	if (c.closeAfter && c.hold == nil) || c.in.len() == 0 {
		return // (a hold the drain found goes on: its request was taken)
	}
	if c.out.len() > creditAt && c.hold == nil {
		// A pipelining client that is not reading: its next request
		// waits until it has taken most of the answers before, or each
		// request read would add a whole response to c.out.
		return
	}
	end, bareLF := c.in.headEnd()
	if end < 0 && c.in.len() <= maxHead && !bareLF {
		return // the head is not whole yet
	}
	if end < 0 || end > maxHead || !l.start(c, end) {
		if c.out.len() == 0 {
			l.handOver(c)
		}
	}
}

// fields is what start needs of a request head besides l.head.
type fields struct {
	host       []byte
	hosts      int
	length     int64 // -1: none
	lengths    int
	closeAfter bool
	requestID  []byte
	requestIDs int
}

// channelWait bounds how long a request waits for a worker channel of a
// VM that is running (its workers are being greeted) before the loop
// hands it to the net/http server, which sends it through init.
const channelWait = 2 * time.Second

// hold is what the loop holds for a client's next request before its
// stream opens: the program's VM and a slot of its limit, or the wait for
// them off the loop.
type hold struct {
	id      string // the request's id
	program string // and what the metrics record of it
	method  string
	path    string
	start   time.Time
	inst    *lifecycle.Instance
	lim     *front.Limiter // the slot held, nil for none
	waiting bool           // acquire runs
	// closeAfter: the request asked to close the connection after it.
	closeAfter bool
	cancel     context.CancelFunc
	until      int64 // when to stop waiting for a worker channel; 0: not yet waited
}

// errAtLimit is acquire's answer when the program's requests in flight
// stayed at its limit for the queue timeout.
var errAtLimit = errors.New("the program is at its limit of concurrent requests")

// wait acquires a slot of the program's limit and its VM (booting it if
// needed) off the loop; acquired resumes c. A client that goes away
// cancels the wait.
func (l *loop) wait(c *client, hd *hold, t front.Target, hasBody bool) {
	ctx, cancel := context.WithCancel(context.Background())
	hd.waiting, hd.cancel = true, cancel
	f := l.f
	go func() {
		defer cancel()
		lim := t.Route.Limiter
		if lim != nil && !lim.Acquire(ctx) {
			f.do(func(l *loop) { l.acquired(c, hd, nil, nil, errAtLimit, hasBody) })
			return
		}
		inst, err := f.router.Manager.Acquire(ctx, t.Route.Program)
		if err != nil && lim != nil {
			lim.Release()
			lim = nil
		}
		if !f.do(func(l *loop) { l.acquired(c, hd, inst, lim, err, hasBody) }) && err == nil {
			inst.Release() // the loop has ended
			if lim != nil {
				lim.Release()
			}
		}
	}()
}

// acquired resumes c once wait has what c's request needs, or refuses the
// request as the net/http server does when it could not have it.
func (l *loop) acquired(c *client, hd *hold, inst *lifecycle.Instance, lim *front.Limiter, err error, hasBody bool) {
	if c.fd < 0 || c.hold != hd {
		if err == nil { // the client left meanwhile
			inst.Release()
			if lim != nil {
				lim.Release()
			}
		}
		return
	}
	hd.waiting, hd.inst, hd.lim = false, inst, lim
	if err == nil {
		l.mark(c) // next opens the stream
		return
	}
	c.hold = nil
	switch {
	case errors.Is(err, errAtLimit):
		l.refuse(c, hd, http.StatusServiceUnavailable, "the program is at its limit of concurrent requests; try again later", hasBody)
	case errors.Is(err, lifecycle.ErrTooMany):
		l.refuse(c, hd, http.StatusServiceUnavailable, "the node is at capacity; try again later", hasBody)
	default:
		l.refuse(c, hd, http.StatusBadGateway, "the program failed to start", hasBody, "err", err)
	}
}

// release gives back what c's hold holds, and ends its wait.
func (l *loop) release(c *client) {
	hd := c.hold
	if hd == nil {
		return
	}
	c.hold = nil
	if hd.cancel != nil {
		hd.cancel()
	}
	if hd.inst != nil {
		hd.inst.Release()
	}
	if hd.lim != nil {
		hd.lim.Release()
	}
}

// start relays the request whose head ends at end, if the loop may serve
// it: false leaves c as it was.
func (l *loop) start(c *client, end int) bool {
	h := &l.head
	var fs fields
	path, ok := l.parse(c, c.in.bytes()[:end], &fs)
	if !ok {
		return false
	}
	rt := l.f.router
	t, ok := rt.FastRoute(string(fs.host), path)
	if !ok || (rt.MaxBody > 0 && fs.length > rt.MaxBody) {
		return false
	}
	hd := c.hold
	if hd == nil {
		if hd = c.spareHold; hd == nil {
			hd = new(hold)
		}
		c.spareHold = nil
		*hd = hold{start: time.Now(), program: t.ID, method: string(h.Method), path: path, closeAfter: fs.closeAfter}
		if fs.requestIDs == 1 && relay.WellFormedID(string(fs.requestID)) {
			hd.id = string(fs.requestID)
		} else {
			hd.id = relay.NewRequestID()
		}
		lim := t.Route.Limiter
		if lim == nil || lim.TryAcquire() {
			hd.lim = lim
			hd.inst = rt.Manager.TryAcquire(t.Route.Program)
		}
		c.hold = hd
		if hd.inst == nil {
			if hd.lim != nil {
				hd.lim.Release()
				hd.lim = nil
			}
			// At the program's limit, or its VM stopped or booting: wait
			// off the loop, as the net/http server would.
			l.wait(c, hd, t, fs.length > 0)
			return true
		}
	}
	if hd.waiting {
		return true
	}
	inst := hd.inst
	set := inst.Workers()
	if set == nil {
		// A VM without worker channels (qemu's virtio-serial carries one
		// connection): init routes its requests.
		return l.leave(c)
	}
	ch := l.pick(set)
	if ch == nil {
		// A VM just booted may not have greeted its workers yet: the
		// loop tries again at each tick, for a while, then lets init
		// route the request.
		if hd.until == 0 {
			hd.until = l.now() + int64(channelWait)
		}
		if l.now() < hd.until {
			l.stall(c)
			return true // (draining too: the drain waits for holds)
		}
		return l.leave(c)
	}
	lim := hd.lim
	c.hold = nil
	if hd.cancel == nil {
		// Never waited off the loop: no goroutine knows it, so the next
		// request may reuse it (acquired tells holds apart by address).
		c.spareHold = hd
	}
	h.Path, h.RootPath = []byte(t.Path), []byte(t.RootPath)
	h.RawPath = h.Path // no escapes: the raw path is the path
	at := ch.out.openFrame(end)
	ch.out.b = h.Append(ch.out.b)
	size := ch.out.frameSize(at)
	if size > int(ch.peer.MaxFrameSize) {
		ch.out.b = ch.out.b[:at] // never sent: the id stays unused
		c.hold = hd
		return l.leave(c) // the net/http server answers 431
	}
	id := ch.next
	if ch.next += 2; ch.next > maxStreamID {
		l.goAway(ch)
	}
	flags := frame.Flags(0)
	if fs.length <= 0 {
		flags = frame.FlagFin
	}
	frame.AppendHeader(ch.out.b[at:at], frame.Header{Type: frame.TypeRequest, Flags: flags, StreamID: id, Length: uint32(size)})
	l.markChannel(ch)
	inst.CountDirect()
	r := c.spare
	if r == nil {
		r = new(request)
	}
	c.spare = nil
	*r = request{stream: id, on: ch, inst: inst, lim: lim, id: hd.id, method: hd.method, path: path, target: t,
		start: hd.start, isHead: hd.method == "HEAD", bodyLeft: max(fs.length, 0), window: int64(ch.peer.InitialWindow),
		bodyAt: l.now(), declared: -1, headOut: r.headOut[:0]}
	if t.Route.Timeout > 0 {
		r.deadline = l.now() + int64(t.Route.Timeout)
	}
	ch.streams[id] = c
	ch.outstanding++
	c.req, c.closeAfter = r, fs.closeAfter || l.draining
	c.served++
	c.in.consume(end + 4)
	l.progress(c)
	return true
}

// leave gives up c's hold: false, the request goes to the net/http
// server. While the agent drains, that server has closed its listener and
// a connection handed to it would be closed unanswered: the loop answers
// 503 itself and closes the connection (refuse, as for a body: the rest
// of the input is dropped).
func (l *loop) leave(c *client) bool {
	hd := c.hold
	l.release(c)
	if !l.draining || hd == nil {
		return false
	}
	l.refuse(c, hd, http.StatusServiceUnavailable, "the agent is stopping; try again later", true)
	return true
}

// parse fills l.head from a request's line and fields and returns the
// path, or false for a request the loop leaves to the net/http server:
// anything outside a strict subset of RFC 9112 (HTTP/1.1, an origin-form
// target of unreserved characters, no percent-escapes in its path, fields
// without obsolete folding or control characters, one Host, at most one
// Content-Length and no transfer coding), and every upgrade, Expect and
// trailer.
func (l *loop) parse(c *client, head []byte, fs *fields) (string, bool) {
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	method, line, ok1 := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(line, []byte(" "))
	if !ok1 || !ok2 || !token(method) || string(version) != "HTTP/1.1" || !plainTarget(target) {
		return "", false
	}
	h := &l.head
	*h = message.RequestHead{HTTPVersion: version[5:], Method: method, Scheme: []byte("http"), Headers: h.Headers[:0],
		ClientHost: c.host, ClientPort: c.port, ServerHost: c.local, ServerPort: c.localPort}
	path, query, _ := bytes.Cut(target, []byte("?"))
	h.QueryString = query
	fs.length = -1
	if cap(l.names) < len(head) {
		l.names = make([]byte, 0, len(head)) // never grows below: the names stay put
	}
	l.names = l.names[:0]
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(field, []byte(":"))
		if !ok || !token(name) {
			return "", false
		}
		value = bytes.Trim(value, " \t")
		if !httpguts.ValidHeaderFieldValue(string(value)) {
			return "", false
		}
		at := len(l.names)
		l.names = appendLower(l.names, name)
		name = l.names[at:]
		switch string(name) {
		case "host":
			fs.host = value
			fs.hosts++
		case "content-length":
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || !digits(value) {
				return "", false
			}
			fs.length = n
			fs.lengths++
		case "transfer-encoding", "te", "trailer", "upgrade", "expect":
			return "", false
		case "connection":
			if httphdr.HasToken(string(value), "upgrade") {
				return "", false
			}
			fs.closeAfter = fs.closeAfter || httphdr.HasToken(string(value), "close")
		case "x-request-id":
			fs.requestID = value
			fs.requestIDs++
		}
		h.Headers = append(h.Headers, message.HeaderField{Name: name, Value: value})
	}
	if fs.hosts != 1 || fs.lengths > 1 || !httpguts.ValidHostHeader(string(fs.host)) {
		return "", false
	}
	return string(path), true
}

// appendLower appends an ASCII field name in lower case (the worker gets
// names in lower case, as uvicorn gives them).
func appendLower(b, name []byte) []byte {
	for _, x := range name {
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		b = append(b, x)
	}
	return b
}

// digits reports whether b is a non-empty run of decimal digits.
func digits(b []byte) bool {
	for _, x := range b {
		if x < '0' || x > '9' {
			return false
		}
	}
	return len(b) > 0
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

// plainTarget reports whether a request target is origin-form with a path
// of unreserved characters, sub-delimiters, ':', '@' and '/' only (no
// percent-escape: the path the app sees is the raw path) and not starting
// with "//", and a query of those, '?' and percent-escapes.
func plainTarget(t []byte) bool {
	if len(t) == 0 || t[0] != '/' || (len(t) > 1 && t[1] == '/') {
		return false
	}
	query := false
	for _, x := range t {
		switch {
		case 'a' <= x && x <= 'z', 'A' <= x && x <= 'Z', '0' <= x && x <= '9':
		case bytes.IndexByte([]byte("-._~!$&'()*+,;=:@/"), x) >= 0:
		case x == '?':
			query = true
		case x == '%' && query:
		default:
			return false
		}
	}
	return true
}

// progress moves c's request along: body bytes to the worker as its
// credit allows, and response credit back once the client has taken what
// it holds.
func (l *loop) progress(c *client) {
	r := c.req
	if len(r.stash) > 0 && c.out.len() == 0 {
		l.writeBody(c, nil) // the client took what waited: the stash goes as one chunk
	}
	if r.reset || r.on.fd < 0 {
		return
	}
	ch := r.on
	// A body goes on while the channel's queue is short (a worker that
	// reads slowly makes the loop read the client slowly, not queue).
	for r.bodyLeft > 0 && r.window > 0 && c.in.len() > 0 && !r.finished && ch.out.len() < creditAt {
		n := min(r.bodyLeft, r.window, int64(c.in.len()), int64(ch.peer.MaxFrameSize))
		flags := frame.Flags(0)
		if n == r.bodyLeft {
			flags = frame.FlagFin
		}
		l.sendData(ch, flags, r.stream, c.in.bytes()[:n])
		c.in.consume(int(n))
		r.bodyLeft -= n
		r.window -= n
		r.bodyAt = l.now()
		l.markChannel(ch)
	}
	if r.owed > 0 && c.out.len()+len(r.stash) <= creditAt && !r.finished {
		var credit [4]byte
		credit[0], credit[1], credit[2], credit[3] = byte(r.owed>>24), byte(r.owed>>16), byte(r.owed>>8), byte(r.owed)
		ch.out.sendFrame(frame.TypeWindowUpdate, 0, r.stream, credit[:])
		r.credited += r.owed
		r.owed = 0
		l.markChannel(ch)
	}
}

// sendData sends a piece of a request body to ch: a DATA_SHARED frame
// when it is big and the channel's shared buffer has room, else a DATA
// frame, written at once, header and payload together, when nothing is
// queued before it and the payload is big enough, else queued.
func (l *loop) sendData(ch *channel, flags frame.Flags, id uint32, p []byte) {
	if ch.shared != nil && len(p) >= sharedRequestMin {
		// Through the request ring where it has room (SPEC.md §11.1).
		if pos, ok := ch.shared.putRequest(p); ok {
			ch.out.sendFrame(frame.TypeDataShared, flags, id, appendSharedRef(l.ref[:0], pos, len(p)))
			return
		}
	}
	if ch.out.len() > 0 || len(p) < directWrite {
		ch.out.sendFrame(frame.TypeData, flags, id, p)
		return
	}
	var hdr [frame.HeaderSize]byte
	frame.AppendHeader(hdr[:0], frame.Header{Type: frame.TypeData, Flags: flags, StreamID: id, Length: uint32(len(p))})
	n, err := unix.Writev(ch.fd, [][]byte{hdr[:], p})
	if err != nil {
		n = 0 // writeChannel meets the error again and closes the channel
	}
	if n < len(hdr) {
		ch.out.write(hdr[n:])
		n = len(hdr)
	}
	ch.out.write(p[n-len(hdr):])
}

// takeHead turns the program's response head into c's status line and
// fields, as the relay does for the net/http server (relay.writeHead):
// the app's fields as it sent them, names in canonical case, but
// Transfer-Encoding (the loop frames the body itself) and a Connection
// field with "close" (which closes the connection after the response);
// X-Request-Id added unless the app sent one; Date unless the app sent
// one. The framing fields follow once the loop knows whether the body is
// whole (sendHeads, complete).
func (l *loop) takeHead(c *client, rh *message.ResponseHead) {
	r := c.req
	r.status = int(rh.Status)
	r.noBody = r.isHead || r.status == 204 || r.status == 304
	b := append(r.headOut[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(r.status), 10)
	b = append(b, ' ')
	if text := http.StatusText(r.status); text != "" {
		b = append(b, text...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(r.status), 10)
	}
	b = append(b, "\r\n"...)
	hasID, hasDate := false, false
	for _, f := range rh.Headers {
		// Lower case is only a SHOULD for a worker (SPEC.md §4): a
		// Content-Length in another case must not pass as an app field.
		l.fieldName = appendLower(l.fieldName[:0], f.Name)
		switch string(l.fieldName) {
		case "transfer-encoding":
			continue
		case "connection":
			if httphdr.HasToken(string(f.Value), "close") {
				c.closeAfter = true
			} else {
				// Sent unless the connection closes after the response
				// (then "Connection: close" replaces it, as net/http does).
				r.connection = append(append(append(r.connection, "Connection: "...), f.Value...), "\r\n"...)
			}
			continue
		case "content-length":
			if r.status == 204 || r.status == 304 {
				continue // net/http drops it: no body follows
			}
			r.declared, _ = strconv.ParseInt(string(f.Value), 10, 64) // checked: canonical
		case "content-type":
			if r.status == 304 {
				continue // as net/http (RFC 9110 15.4.5)
			}
		case "x-request-id":
			if !hasID && string(f.Value) != r.id {
				r.appID = relay.KeptAppID(string(f.Value))
			}
			hasID = true
		case "date":
			hasDate = true
		}
		b = append(b, relay.CanonicalName(f.Name)...)
		b = append(b, ": "...)
		b = append(b, f.Value...)
		b = append(b, "\r\n"...)
	}
	if !hasID {
		b = append(append(append(b, "X-Request-Id: "...), r.id...), "\r\n"...)
	}
	if !hasDate {
		b = append(append(append(b, "Date: "...), l.httpDate()...), "\r\n"...)
	}
	r.headOut = b
	r.waiting = true
	l.waitingHeads = append(l.waitingHeads, c)
}

// sendHeads writes the heads of the responses whose body is not whole
// after a read of the worker's channel: streamed, with chunked coding
// unless the app gave a Content-Length.
func (l *loop) sendHeads() {
	for _, c := range l.waitingHeads {
		if r := c.req; r != nil && r.waiting && c.fd >= 0 {
			r.chunked = !r.noBody && r.declared < 0
			l.writeHead(c, -1)
			if len(r.pending) > 0 {
				l.writeBody(c, r.pending)
				r.pending = nil
			}
		}
	}
	l.waitingHeads = l.waitingHeads[:0]
}

// writeHead ends c's response head with its framing fields: the body's
// length when known (length ≥ 0) and allowed, chunked coding, or neither.
func (l *loop) writeHead(c *client, length int64) {
	r := c.req
	if r.bodyLeft > maxDiscard {
		// As net/http decides when it writes a head: more request body
		// unread than it would drop, so the connection closes after.
		c.closeAfter = true
	}
	c.out.write(r.headOut)
	switch {
	case r.chunked:
		c.out.writeString("Transfer-Encoding: chunked\r\n")
	case length >= 0 && r.declared < 0 && !r.noBody:
		c.out.writeString("Content-Length: ")
		c.out.b = strconv.AppendInt(c.out.b, length, 10)
		c.out.writeString("\r\n")
	}
	if c.closeAfter {
		c.out.writeString("Connection: close\r\n")
	} else {
		c.out.write(r.connection)
	}
	c.out.writeString("\r\n")
	r.waiting, r.headSent = false, true
	l.mark(c)
}

// body takes DATA of c's response.
func (l *loop) body(c *client, p []byte) {
	r := c.req
	r.owed += int64(len(p))
	if r.noBody {
		// Discarded, as net/http does; the credit still goes back
		// (progress returns it).
		r.dropped += int64(len(p))
		l.mark(c)
		return
	}
	excess := r.declared >= 0 && r.sent+int64(len(p)) > r.declared
	if excess {
		// More than the app's Content-Length: the client gets what was
		// declared, the stream ends and the connection after it.
		p = p[:r.declared-r.sent]
	}
	r.sent += int64(len(p))
	if r.waiting && !excess && len(r.pending) == 0 && len(p) >= directWrite && r.declared >= 0 {
		// A big body whose length the app gave: the head's framing is
		// known, so it goes now, with the body in one write, instead of
		// the body being copied to wait for sendHeads.
		r.chunked = false
		l.writeHead(c, -1)
	}
	if r.waiting {
		r.pending = append(r.pending, p...)
	} else {
		l.writeBody(c, p)
	}
	if excess {
		l.reset(c, codeCancel)
		c.closeAfter = true
		l.complete(c)
	}
}

// writeBody writes response body bytes, chunked if the response is.
// Small pieces of a chunked body that come while the client has not
// taken what waits for it are stashed and go out as one chunk (progress,
// complete): each chunk's framing would otherwise be added to the client's
// queue per piece, which credit does not count (1-byte pieces: 6 bytes
// queued for each byte of credit).
func (l *loop) writeBody(c *client, p []byte) {
	if r := c.req; r.chunked && (len(r.stash) > 0 || c.out.len() > 0) {
		r.stash = append(r.stash, p...)
		if c.out.len() > 0 && len(r.stash) < directWrite {
			return
		}
		p, r.stash = r.stash, r.stash[:0] // (writeOut copies what it keeps)
	}
	l.writeOut(c, p)
}

// writeOut writes response body bytes to c, as one chunk if the response
// is chunked.
func (l *loop) writeOut(c *client, p []byte) {
	if len(p) == 0 {
		return
	}
	var size []byte // the chunk's size line
	if c.req.chunked {
		size = append(strconv.AppendUint(l.chunk[:0], uint64(len(p)), 16), "\r\n"...)
	}
	if c.out.len() < directWrite && len(p) >= directWrite {
		// Little or nothing queued (a head at most): what waits and the
		// body go in one write, the body straight from the worker's
		// frame, without a copy; what the socket does not take now is
		// queued after what waits of the queue.
		queued := c.out.len()
		parts := append(l.parts[:0], c.out.bytes())
		if size != nil {
			parts = append(parts, size, p, crlf)
		} else {
			parts = append(parts, p)
		}
		l.parts = parts
		n, err := unix.Writev(c.fd, parts)
		if err != nil {
			n = 0 // flush meets the error again and drops the client
		}
		if n > 0 {
			c.since = l.now() // progress, for the send time limit
		}
		k := min(n, queued)
		c.out.consume(k)
		n -= k
		for _, part := range parts[1:] {
			k := min(n, len(part))
			c.out.write(part[k:])
			n -= k
		}
		clear(l.parts) // (no reference kept to the frame)
		l.mark(c)
		return
	}
	c.out.write(size)
	c.out.write(p)
	if size != nil {
		c.out.writeString("\r\n")
	}
	l.mark(c)
}

// directWrite is the least body data written to a socket straight from
// where it lies (the worker's frame, the client's input) when nothing is
// queued before it: a copy into the output queue costs more than the
// system call from there on.
const directWrite = 16 << 10

// crlf ends a chunk.
var crlf = []byte("\r\n")

// complete ends c's response: the worker's side is done.
func (l *loop) complete(c *client) {
	r := c.req
	r.finished = true
	if r.bodyLeft > 0 {
		// Answered before the body was all sent: as net/http does, up to
		// 256 KiB of the rest is read and dropped before the next
		// request, and beyond the connection closes.
		l.reset(c, codeCancel)
		l.skipBody(c)
	}
	if r.waiting && r.isHead && r.dropped > 0 && r.declared < 0 && r.status != 204 && r.status != 304 {
		// As net/http does: the length of the whole body the app sent
		// in answer to HEAD (none of it sent).
		r.headOut = append(append(append(r.headOut, "Content-Length: "...), strconv.FormatInt(r.dropped, 10)...), "\r\n"...)
	}
	if r.waiting {
		l.writeHead(c, int64(len(r.pending))) // whole: sent with its length
		if len(r.pending) > 0 {
			c.out.write(r.pending)
		}
		r.pending = nil
	} else if r.chunked {
		l.writeOut(c, r.stash)
		r.stash = nil
		c.out.writeString("0\r\n\r\n")
	}
	if r.declared >= 0 && !r.noBody && r.sent != r.declared {
		c.closeAfter = true // shorter than declared: the client sees it cut
	}
	l.finish(c, r.status)
}

// maxDiscard is the most of an unread request body the loop reads and
// drops to keep the connection (net/http's maxPostHandlerReadBytes).
const maxDiscard = 256 << 10

// skipBody drops the rest of c's request body, which its app did not
// read: what c has sent of it, and the rest as it comes, up to
// maxDiscard; beyond, the connection closes once answered.
func (l *loop) skipBody(c *client) {
	r := c.req
	if r.bodyLeft > maxDiscard {
		c.closeAfter = true
		return
	}
	n := min(r.bodyLeft, int64(c.in.len()))
	c.in.consume(int(n))
	c.discard = r.bodyLeft - n
	r.bodyLeft = 0
}

// failed ends c's request, which its worker reset with code (or whose
// channel closed): an error answer while nothing was sent, else the
// response is cut short by closing the connection.
func (l *loop) failed(c *client, code uint32, why string) {
	r := c.req
	r.finished, r.reset = true, true // the worker's side is gone
	if !r.gotHead {
		status, msg := relay.StatusForReset(code)
		l.answerError(c, status, msg, "reset", frame.CodeName(code), "reason", why)
		return
	}
	if r.appID != "" {
		l.f.log.Warn("response broke off", "request_id", r.id, "app_request_id", r.appID, "reset", frame.CodeName(code), "reason", why)
	} else {
		l.f.log.Warn("response broke off", "request_id", r.id, "reset", frame.CodeName(code), "reason", why)
	}
	if r.waiting {
		// The head came: it goes out with what came of the body, as a
		// streamed response, cut short by the close.
		r.chunked = !r.noBody && r.declared < 0
		l.writeHead(c, -1)
		l.writeBody(c, r.pending)
		r.pending = nil
	}
	l.writeOut(c, r.stash) // what came before the break goes out
	r.stash = nil
	c.closeAfter = true
	l.finish(c, r.status)
}

// abandon ends c's request on the loop's side: the client left (status
// 499 unless its response had started).
func (l *loop) abandon(c *client, code uint32, status int) {
	r := c.req
	l.reset(c, code)
	if r.headSent {
		status = r.status
	}
	l.finish(c, status)
}

// timedOut ends a request past its program's time limit: 504 while
// nothing was sent, else the connection is cut.
func (l *loop) timedOut(c *client) {
	r := c.req
	l.reset(c, codeTimeout)
	if !r.headSent {
		l.answerError(c, http.StatusGatewayTimeout, "the program did not answer in time", "timeout", r.target.Route.Timeout)
		return
	}
	l.drop(c)
}

// bodyTimedOut ends a request whose body stopped arriving: 408 while
// nothing was answered, else the connection is cut.
func (l *loop) bodyTimedOut(c *client) {
	r := c.req
	l.reset(c, codeCancel)
	if !r.headSent {
		c.closeAfter = true
		l.answerError(c, http.StatusRequestTimeout, "the request body did not arrive in time", "body_timeout", l.f.opt.Limits.Body)
		return
	}
	l.drop(c)
}

// answerError answers c's request with a short JSON error, as
// relay.Error does, and ends it; the detail goes to the log.
func (l *loop) answerError(c *client, status int, msg string, detail ...any) {
	r := c.req
	if r.bodyLeft > 0 {
		c.closeAfter = true // the rest of the body is not read
	}
	r.pending, r.waiting, r.chunked, r.declared = nil, false, false, -1
	r.status, r.finished, r.headSent = status, true, true
	l.writeError(c, r.id, r.isHead, status, msg, detail...)
	l.finish(c, status)
}

// refuse answers the request c's hold is for, whose stream never opened,
// with a short JSON error, as the front's reject does: a 503 says when to
// retry, and a request whose body was not read closes the connection.
func (l *loop) refuse(c *client, hd *hold, status int, msg string, hasBody bool, detail ...any) {
	if end := bytes.Index(c.in.bytes(), []byte("\r\n\r\n")); end >= 0 && !hasBody {
		c.in.consume(end + 4)
		c.closeAfter = hd.closeAfter || l.draining
	} else {
		c.closeAfter = true
		c.in.consume(c.in.len())
	}
	c.served++
	l.writeError(c, hd.id, hd.method == "HEAD", status, msg, append(detail, "program", hd.program)...)
	if m := l.f.router.Metrics; m != nil {
		m.Request(metrics.RequestRecord{Time: hd.start, Program: hd.program, Method: hd.method, Path: hd.path, Status: status,
			Took: time.Since(hd.start), ID: hd.id})
	}
	c.since = l.now()
}

// writeError writes a short JSON error response, as relay.Error does,
// and logs it with its detail.
func (l *loop) writeError(c *client, id string, head bool, status int, msg string, detail ...any) {
	l.f.log.Warn(msg, append([]any{"request_id", id, "status", status}, detail...)...)
	body, _ := json.Marshal(map[string]string{"error": msg, "request_id": id})
	body = append(body, '\n')
	b := append(c.out.b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(append(append(b, ' '), http.StatusText(status)...), "\r\nContent-Type: application/json\r\n"...)
	if status == http.StatusServiceUnavailable {
		b = append(b, "Retry-After: 1\r\n"...)
	}
	b = append(append(append(b, "X-Request-Id: "...), id...), "\r\nDate: "...)
	b = append(append(b, l.httpDate()...), "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	if c.closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if !head {
		b = append(b, body...)
	}
	c.out.b = b
	l.mark(c)
}

// finish forgets c's request: its stream, its hold on the VM and its slot,
// and records it.
func (l *loop) finish(c *client, status int) {
	r := c.req
	if r.bodyLeft > 0 && !r.reset {
		l.reset(c, codeCancel)
	}
	if ch := r.on; ch.streams[r.stream] == c {
		delete(ch.streams, r.stream)
		ch.outstanding--
		if len(l.stalled) > 0 {
			l.wakeStalled(ch.set, 1) // the stream's slot on ch is free
		}
	}
	r.inst.Release()
	if r.lim != nil {
		r.lim.Release()
	}
	if m := l.f.router.Metrics; m != nil {
		m.Request(metrics.RequestRecord{Time: r.start, Program: r.target.ID, Method: r.method, Path: r.path, Status: status,
			Took: time.Since(r.start), ID: r.id, AppID: r.appID})
	}
	c.req = nil
	if cap(r.headOut) <= 4<<10 { // not an app's huge head
		c.spare = r
	}
	c.since = l.now()
	if c.fd >= 0 {
		l.mark(c) // a pipelined request may start
	}
}

// httpDate is the Date field's value, formatted once a second.
func (l *loop) httpDate() []byte {
	t := time.Now()
	if s := t.Unix(); s != l.dateAt {
		l.dateAt = s
		l.date = t.UTC().AppendFormat(l.date[:0], http.TimeFormat)
	}
	return l.date
}
