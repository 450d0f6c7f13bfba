package loopfront

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// A worker that floods PINGs and never reads its channel: the PING ACKs
// the loop queues toward it stay bounded, and the channel is closed
// (SPEC.md §9: frames queued for writing are bounded; the agent's
// sessions close such a peer past 8 MiB too).
func TestPingFloodFromAWorkerThatDoesNotReadIsCutOff(t *testing.T) {
	loopEnd, worker := socketPair(t)
	defer unix.Close(worker)
	l := newTestLoop(t)
	ch := &channel{fd: loopEnd, streams: map[uint32]*client{}, next: 1}
	l.channels[loopEnd] = ch
	if err := l.watch(unix.EPOLL_CTL_ADD, loopEnd, true, false); err != nil {
		t.Fatal(err)
	}
	defer l.closeChannel(ch, "test over")
	var pings []byte
	for range 3000 { // 54 KB of PINGs
		pings = appendFrame(pings, frame.TypePing, 0, 0, make([]byte, 8))
	}
	most := 0
	for round := 0; round < 400 && ch.fd >= 0; round++ { // 21 MB sent in all
		for off := 0; off < len(pings); {
			n, err := unix.Write(worker, pings[off:])
			if err != nil {
				break // the socket is full: the loop reads
			}
			off += n
			l.readChannel(ch)
		}
		l.readChannel(ch)
		l.flush() // writes what the worker's socket takes: it takes nothing more once full
		most = max(most, ch.out.len())
	}
	if most > maxQueued+(64<<10) {
		t.Fatalf("a worker that sends PINGs and reads nothing made the loop queue %d MB of ACKs toward it", most>>20)
	}
	if ch.fd >= 0 {
		t.Fatalf("the channel of a worker that sent 21 MB of PINGs and read no ACK is still open (%d bytes queued)", ch.out.len())
	}
}

// A worker (the app's VM: untrusted) that sends its framing fields with
// names not in lower case (SPEC.md §4: lower case is a SHOULD): the loop
// must not pass the app's own Content-Length or Transfer-Encoding next to
// the framing it adds, which would desync the client (or a proxy sharing
// the connection) on where the response ends.
func TestWorkerFramingFieldsInAnyCaseFrameOnce(t *testing.T) {
	for _, name := range []string{"Content-Length", "Transfer-Encoding"} {
		t.Run(name, func(t *testing.T) {
			l, ch, c, worker := channelWithRequest(t)
			value := "5"
			if name == "Transfer-Encoding" {
				value = "chunked"
			}
			rh := message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte(name), Value: []byte(value)}}}
			out := appendFrame(nil, frame.TypeResponse, 0, 1, rh.Append(nil))
			out = appendFrame(out, frame.TypeData, 0, 1, []byte("hello")) // more to come: streamed
			fromWorker(t, l, ch, worker, out)
			head, _, _ := strings.Cut(string(c.out.bytes()), "\r\n\r\n")
			lower := strings.ToLower(head)
			if strings.Count(lower, "content-length:")+strings.Count(lower, "transfer-encoding:") > 1 {
				t.Errorf("the client gets two framings:\n%s", head)
			}
		})
	}
}

// channelWithRequest is a loop with one worker channel and one client (socket
// pairs: the test holds the worker's end), the client's request open on
// stream 1.
func channelWithRequest(t *testing.T) (*loop, *channel, *client, int) {
	t.Helper()
	pair := func() (int, int) {
		a, b := socketPair(t)
		t.Cleanup(func() { unix.Close(a); unix.Close(b) })
		return a, b
	}
	chFd, worker := pair()
	cFd, _ := pair()
	l := newTestLoop(t)
	ch := &channel{fd: chFd, streams: map[uint32]*client{}, next: 3, peer: message.Hello{MaxFrameSize: 64 << 10, InitialWindow: 256 << 10, MaxStreams: 8}}
	l.channels[chFd] = ch
	c := &client{fd: cFd}
	l.clients[cFd] = c
	c.req = &request{stream: 1, on: ch, id: "0123456789abcdef", method: "GET", window: 256 << 10, declared: -1}
	ch.streams[1] = c
	ch.outstanding = 1
	return l, ch, c, worker
}

// fromWorker writes b on the worker's end of ch, as the worker would, and
// lets the loop read it.
func fromWorker(t *testing.T, l *loop, ch *channel, worker int, b []byte) {
	t.Helper()
	if _, err := unix.Write(worker, b); err != nil {
		t.Fatal(err)
	}
	l.readChannel(ch)
}

// socketPair returns the two ends of a non-blocking unix stream socket
// pair, as the loop's clients and channels are; the caller closes them.
func socketPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fds[0], fds[1]
}

// Requests waiting for a worker channel with room (every channel at its
// worker's stream limit) are retried as soon as a stream ends, oldest
// first and one per freed stream, not only at the next tick: each tick is
// 100 ms, a long wait at the rates the loop serves.
func TestAStreamsEndRetriesTheOldestStalledRequest(t *testing.T) {
	l, ch, c, _ := channelWithRequest(t)
	l.f.router = &front.Router{}
	c.req.inst = &lifecycle.Instance{}
	ch.peer.MaxStreams = 1
	var stalled []*client
	for i := range 3 {
		s := &client{fd: 100 + i, hold: &hold{inst: &lifecycle.Instance{}}}
		l.stall(s)
		l.stall(s) // stalled twice: queued once
		stalled = append(stalled, s)
	}
	if len(l.stalled) != 3 {
		t.Fatalf("%d clients queued as stalled, want 3", len(l.stalled))
	}
	stalled[0].fd = -1 // gone meanwhile: forgotten, not retried
	l.finish(c, http.StatusOK)
	if stalled[0].dirty || !stalled[1].dirty || stalled[2].dirty {
		t.Fatalf("after one stream ended, retried (gone, oldest, newest) = %v %v %v; want the oldest live one only",
			stalled[0].dirty, stalled[1].dirty, stalled[2].dirty)
	}
	if len(l.stalled) != 1 || l.stalled[0] != stalled[2] || !stalled[2].stalled {
		t.Fatalf("the newest stalled request should still wait in the queue: %d queued", len(l.stalled))
	}
	stalled[2].hold = nil // its client left
	l.wakeStalled(nil, 0)
	if len(l.stalled) != 0 {
		t.Fatalf("a client that no longer waits stays queued")
	}
}

// Frames a worker sent before it saw its stream's RESET arrive after the
// loop forgot the stream: they pass, websocket ones too (a side session's
// websocket reset by its client while the worker still sends), and do not
// end the worker's channel with every request on it. On one of the loop's
// own HTTP streams, a websocket frame is a protocol error.
func TestLateWebsocketFramesOfAnEndedStreamPass(t *testing.T) {
	l, ch, _, _ := channelWithRequest(t)
	ch.next = 9 // streams 3 to 7 were opened and have ended
	for _, typ := range []frame.Type{frame.TypeWSMessage, frame.TypeWSClose, frame.TypeData, frame.TypeReset} {
		if err := l.frame(ch, frame.Header{Type: typ, StreamID: 7}, nil); err != nil {
			t.Errorf("a late %s on an ended stream: %v", typ, err)
		}
	}
	if err := l.frame(ch, frame.Header{Type: frame.TypeWSMessage, StreamID: 1}, []byte("x")); err == nil {
		t.Error("a WS_MESSAGE on one of the loop's HTTP streams passed")
	}
}

// Whatever piles up toward a worker that reads nothing (credit for its
// tiny DATA frames, resets), not only PING ACKs, is bounded: past
// maxQueued the channel is closed.
func TestAnythingQueuedPastTheBoundClosesTheChannel(t *testing.T) {
	l, ch, c, _ := channelWithRequest(t)
	l.f.router = &front.Router{}
	c.req.inst = &lifecycle.Instance{}
	for ch.out.len() < maxQueued+(64<<10) {
		ch.out.sendFrame(frame.TypeWindowUpdate, 0, 1, []byte{0, 0, 0, 1})
	}
	l.writeChannel(ch) // the worker's socket takes a few hundred KiB, then nothing
	if ch.fd >= 0 {
		t.Fatalf("the channel of a worker that reads nothing stays open with %d MiB queued toward it", ch.out.len()>>20)
	}
}

// A streamed (chunked) response whose worker sends its body a byte per
// DATA frame to a client that reads nothing: what the loop queues for
// the client stays near what credit allows (creditAt and one window),
// not six times that (each byte its own chunk: "1\r\nx\r\n"), since small
// pieces that come while the client is behind go out as one chunk.
func TestTinyChunksToASlowClientStayBounded(t *testing.T) {
	l, _, c, _ := channelWithRequest(t)
	l.f.router = &front.Router{}
	r := c.req
	r.gotHead, r.headSent, r.chunked, r.status = true, true, true, 200
	most := 0
	for range initialWindow { // one window, a byte at a time
		l.body(c, []byte{'x'})
		l.progress(c) // (the client takes nothing: its socket fills)
		most = max(most, c.out.len()+len(r.stash))
	}
	if limit := creditAt + initialWindow + 64<<10; most > limit {
		t.Fatalf("one window of 1-byte pieces made the loop queue %d KiB for a client that reads nothing (bound about %d KiB)", most>>10, limit>>10)
	}
	if r.credited+r.owed != int64(initialWindow) {
		t.Fatalf("credit %d + owed %d, want the window %d", r.credited, r.owed, initialWindow)
	}
}

// A stream frame from a worker on a stream the host never opened (an even
// id: the worker's own; or an id past the last the host used) is a
// connection error (SPEC.md §3.4), as it is on the agent's sessions.
func TestFramesOnStreamsNeverOpenedCloseTheChannel(t *testing.T) {
	for _, id := range []uint32{2, 3, 1001} {
		l, ch, _, _ := channelWithRequest(t) // stream 1 open, next 3
		if err := l.frame(ch, frame.Header{Type: frame.TypeData, StreamID: id}, []byte("x")); err == nil {
			t.Errorf("DATA on stream %d, never opened, passed", id)
		}
	}
}

// A frame header that claims more than the channel's largest frame is
// never used to size a read (SPEC.md §2), even when it waits unchecked at
// the front of what was read (reading paused while the side session
// catches up; a hang-up is read all the same): the channel is closed
// and its buffer stays small.
func TestAnOversizedFrameHeaderSizesNoBuffer(t *testing.T) {
	l, ch, c, worker := channelWithRequest(t)
	l.f.router = &front.Router{}
	c.req.inst = &lifecycle.Instance{}
	ch.readingPaused = true
	hdr := frame.AppendHeader(nil, frame.Header{Type: frame.TypeData, StreamID: 1, Length: 200 << 20})
	copy(ch.in.tail(len(hdr)), hdr)
	ch.in.commit(len(hdr))
	fromWorker(t, l, ch, worker, []byte("x"))
	if c := cap(ch.in.b); c > 1<<20 {
		t.Errorf("a header claiming 200 MiB made the loop allocate a %d MiB read buffer", c>>20)
	}
	if ch.fd >= 0 {
		t.Error("the channel of a worker that sent a frame over its maximum size is still open")
	}
}

// A worker that sends its HELLO a byte at a time, each byte within the
// time one read may wait, does not hold the greeting past its deadline:
// the limit is on the whole HELLO, not on each read.
func TestAHelloDribbledAByteAtATimeEndsAtTheDeadline(t *testing.T) {
	loopEnd, worker := socketPair(t)
	if err := unix.SetNonblock(loopEnd, false); err != nil {
		t.Fatal(err)
	}
	hello := message.Hello{Version: 1, Role: 2, MaxFrameSize: 64 << 10, InitialWindow: 256 << 10, MaxStreams: 8}
	b := appendFrame(nil, frame.TypeHello, 0, 0, hello.Append(nil))
	stop, dribbled := make(chan struct{}), make(chan struct{})
	defer func() {
		close(stop)
		<-dribbled // (no write after the descriptors are closed)
		unix.Close(loopEnd)
		unix.Close(worker)
	}()
	go func() {
		defer close(dribbled)
		for i := range b[:len(b)-1] { // never the last byte
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			unix.Write(worker, b[i:i+1])
		}
	}()
	done := make(chan error, 1)
	go func() { _, err := handshake(loopEnd, "test", time.Now().Add(time.Second), -1); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("an incomplete HELLO was taken")
		}
	case <-time.After(time.Duration(len(b)) * 200 * time.Millisecond / 2):
		t.Fatalf("the handshake still waits for a %d-byte HELLO dribbled a byte every 200 ms, well past its 1 s deadline", len(b))
	}
}

// A worker channel silent for the keepalive interval is sent a PING; any
// frame back keeps it, and one that stays silent for the keepalive
// timeout is closed, its requests failed (a worker whose event loop is
// stuck holds its clients no longer). A channel idle for long is pinged
// at the loop's next tick, not closed at once.
func TestASilentWorkerChannelIsPingedThenClosed(t *testing.T) {
	l, ch, c, worker := channelWithRequest(t)
	l.f.router = &front.Router{}
	c.req.inst = &lifecycle.Instance{}
	now := int64(time.Hour) // idle for an hour: the loop had no clients, so no ticks
	l.keepalive(ch, now)
	if ch.fd < 0 || !ch.pinged {
		t.Fatalf("a channel idle for an hour: open %v, pinged %v; want open and pinged", ch.fd >= 0, ch.pinged)
	}
	l.writeChannel(ch)
	buf := make([]byte, 64)
	n, err := unix.Read(worker, buf)
	if err != nil || n != frame.HeaderSize+8 || frame.ParseHeader(buf).Type != frame.TypePing || frame.ParseHeader(buf).Has(frame.FlagAck) {
		t.Fatalf("the worker got %d bytes (%v), want one PING", n, err)
	}
	// The worker answers: the channel lives on, and is pinged again only
	// after another interval of silence.
	fromWorker(t, l, ch, worker, appendFrame(nil, frame.TypePing, frame.FlagAck, 0, buf[frame.HeaderSize:n]))
	if ch.pinged {
		t.Fatal("a PING ACK did not count as a sign of life")
	}
	ch.lastRecv = now
	l.keepalive(ch, now+int64(keepaliveInterval)-1)
	if ch.pinged {
		t.Fatal("pinged before an interval of silence")
	}
	// Now silent: pinged, then closed once the rest of the timeout passes.
	later := now + int64(keepaliveInterval)
	l.keepalive(ch, later)
	l.keepalive(ch, later+int64(keepaliveTimeout-keepaliveInterval)-1)
	if ch.fd < 0 {
		t.Fatal("closed before the keepalive timeout")
	}
	ch.readingPaused = true // the loop is not reading: not the worker's silence
	l.keepalive(ch, later+int64(keepaliveTimeout-keepaliveInterval))
	if ch.fd < 0 {
		t.Fatal("closed while the loop itself was not reading the channel")
	}
	ch.readingPaused = false
	l.keepalive(ch, later+int64(keepaliveTimeout))
	l.keepalive(ch, later+int64(2*keepaliveTimeout-keepaliveInterval))
	if ch.fd >= 0 {
		t.Fatal("a channel silent for the keepalive timeout is still open")
	}
	if c.req != nil {
		t.Fatal("the request on the closed channel is still waiting")
	}
}

// A worker's HELLO is held to SPEC.md §3.1's bounds (a frame size of 16
// KiB to 16 MiB, a window of at most 2³¹−1), and a GOAWAY it sends must
// decode.
func TestAWorkersHelloAndGoAwayAreChecked(t *testing.T) {
	for _, h := range []message.Hello{
		{Version: 1, Role: 2, MaxFrameSize: 32 << 20, InitialWindow: 256 << 10, MaxStreams: 8},
		{Version: 1, Role: 2, MaxFrameSize: 64 << 10, InitialWindow: 1 << 31, MaxStreams: 8},
		{Version: 1, Role: 2, MaxFrameSize: 8 << 10, InitialWindow: 256 << 10, MaxStreams: 8},
	} {
		loopEnd, worker := socketPair(t)
		unix.SetNonblock(loopEnd, false)
		if _, err := unix.Write(worker, appendFrame(nil, frame.TypeHello, 0, 0, h.Append(nil))); err != nil {
			t.Fatal(err)
		}
		if _, err := handshake(loopEnd, "test", time.Now().Add(5*time.Second), -1); err == nil {
			t.Errorf("HELLO %+v taken", h)
		}
		unix.Close(loopEnd)
		unix.Close(worker)
	}
	l, ch, _, _ := channelWithRequest(t)
	if err := l.frame(ch, frame.Header{Type: frame.TypeGoAway}, []byte{0x12, 0x05, 'a'}); err == nil {
		t.Error("a GOAWAY that does not decode was taken")
	}
	if err := l.frame(ch, frame.Header{Type: frame.TypeGoAway}, (&message.GoAway{Message: []byte("bye")}).Append(nil)); err != nil || !ch.goingAway {
		t.Errorf("a GOAWAY: %v, going away %v", err, ch.goingAway)
	}
}

// A big answer whose length the app gave goes out with its head in one
// write as its first DATA comes, straight from the worker's frame: the
// body is not copied to wait for the head, whether both frames come in
// one read (32 KiB) or the head is queued at the end of a read and the
// DATA completes in the next (64 KiB).
func TestBigBodyWithItsLengthLeavesWithItsHead(t *testing.T) {
	for _, size := range []int{32 << 10, 64 << 10} {
		t.Run(strconv.Itoa(size>>10)+"KiB", func(t *testing.T) {
			l, ch, c, worker := channelWithRequest(t)
			far := readableClient(t, l, c)

			body := []byte(strings.Repeat("0123456789abcdef", size/16))
			length := strconv.Itoa(2 * size) // half of it now: more to come
			rh := message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte("content-length"), Value: []byte(length)}}}
			out := appendFrame(nil, frame.TypeResponse, 0, 1, rh.Append(nil))
			out = appendFrame(out, frame.TypeData, 0, 1, body)
			if _, err := unix.Write(worker, out); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 4 && c.req.sent < int64(size); i++ {
				l.readChannel(ch)
			}
			if c.out.len() != 0 {
				t.Fatalf("%d bytes were queued for the client; the head and body should have gone in one write", c.out.len())
			}
			got := make([]byte, 256<<10)
			n, err := unix.Read(far, got)
			if err != nil {
				t.Fatal(err)
			}
			head, rest, ok := strings.Cut(string(got[:n]), "\r\n\r\n")
			if !ok || !strings.HasPrefix(head, "HTTP/1.1 200 OK\r\n") || !strings.Contains(head, "Content-Length: "+length) || strings.Contains(head, "chunked") {
				t.Fatalf("the client got the head %q", head)
			}
			if rest != string(body) {
				t.Fatalf("the client got %d body bytes after the head, not the %d sent", len(rest), len(body))
			}
		})
	}
}

// An app that sends more than the length it gave, the first piece big:
// the client gets the declared length, and the head says the connection
// closes after it (the early head of a big body waits for that).
func TestBigBodyBeyondItsLengthClosesTheConnection(t *testing.T) {
	l, ch, c, worker := channelWithRequest(t)
	l.f.router, c.req.inst = &front.Router{}, &lifecycle.Instance{}
	far := readableClient(t, l, c)
	rh := message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte("content-length"), Value: []byte("20000")}}}
	out := appendFrame(nil, frame.TypeResponse, 0, 1, rh.Append(nil))
	out = appendFrame(out, frame.TypeData, 0, 1, make([]byte, 40000))
	fromWorker(t, l, ch, worker, out)
	l.flush()
	got := make([]byte, 64<<10)
	n, err := unix.Read(far, got)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, _ := strings.Cut(string(got[:n]), "\r\n\r\n")
	if !strings.Contains(head, "Content-Length: 20000") || !strings.Contains(head, "Connection: close") || len(rest) != 20000 {
		t.Fatalf("the client got the head %q and %d body bytes", head, len(rest))
	}
}

// readableClient gives c a blocking socket whose far end the test reads,
// in place of the one channelWithRequest made; both are closed when the
// test ends.
func readableClient(t *testing.T, l *loop, c *client) int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	delete(l.clients, c.fd)
	c.fd = fds[0]
	l.clients[c.fd] = c
	return fds[1]
}
