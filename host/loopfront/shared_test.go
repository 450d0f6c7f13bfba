package loopfront

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// sharedRef is a DATA_SHARED payload.
func sharedRef(pos uint64, n uint32) []byte {
	return appendSharedRef(nil, pos, int(n))
}

// newTestShared is a shared buffer and the worker's own mapping of it.
func newTestShared(t *testing.T) (*sharedBuffer, []byte, int) {
	t.Helper()
	b, fd, err := newSharedBuffer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.close(); unix.Close(fd) })
	mem, err := unix.Mmap(fd, 0, sharedSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return b, mem, fd
}

// The worker holds the buffer's descriptor and may do what it likes with
// it: it cannot change its size, which would make the loop's reads fault.
func TestSharedBufferIsSealed(t *testing.T) {
	_, _, fd := newTestShared(t)
	for _, size := range []int64{0, sharedSize / 2, 2 * sharedSize} {
		if err := unix.Ftruncate(fd, size); err == nil {
			t.Errorf("the worker could resize the shared buffer to %d bytes", size)
		}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err == nil {
		t.Error("the worker could add a seal (F_SEAL_SEAL missing)")
	}
}

// What a DATA_SHARED frame names is checked against the loop's own record
// of what it released, never against what the worker wrote in the buffer.
func TestSharedBufferRefusesReferencesOutsideIt(t *testing.T) {
	b, mem, _ := newTestShared(t)
	if binary.NativeEndian.Uint64(mem[responseSizeAt:]) != responseRing || binary.NativeEndian.Uint64(mem[requestSizeAt:]) != requestRing {
		t.Fatal("the control area does not give the rings' sizes")
	}
	// The worker writes its own idea of the released position: ignored.
	binary.NativeEndian.PutUint64(mem, math.MaxUint64/2)
	if _, _, err := b.take(sharedRef(0, 1000)); err != nil {
		t.Fatalf("a valid reference was refused: %v", err)
	}
	b.release(1000)
	if got := binary.NativeEndian.Uint64(mem); got != 1000 {
		t.Fatalf("the worker sees the released position %d, not 1000", got)
	}
	bad := map[string][]byte{
		"a short payload":                  sharedRef(1000, 10)[:11],
		"a long payload":                   append(sharedRef(1000, 10), 0),
		"no bytes":                         sharedRef(1000, 0),
		"more than a frame":                sharedRef(1000, maxFrameSize+1),
		"before what was released":         sharedRef(999, 10),
		"across the ring's end":            sharedRef(responseRing-10, 20),
		"more than the ring ahead":         sharedRef(1000+responseRing, 10),
		"a position that overflows":        sharedRef(math.MaxUint64-5, 10),
		"past the end of the whole buffer": sharedRef(sharedSize, maxFrameSize),
	}
	for what, payload := range bad {
		if p, _, err := b.take(payload); err == nil {
			t.Errorf("%s: taken (%d bytes)", what, len(p))
		}
	}
	// The ring wraps: a piece may start again at its beginning.
	b.release(responseRing - 100)
	p, end, err := b.take(sharedRef(responseRing, 5000))
	if err != nil || len(p) != 5000 || &p[0] != &b.mem[sharedHeader] || end != responseRing+5000 {
		t.Fatalf("a piece at the ring's start after a wrap: %d bytes, end %d, %v", len(p), end, err)
	}
}

// A worker answers a big body through the shared buffer: the client gets
// the bytes the worker put there, and the worker sees them released.
// A reference outside the buffer closes the channel (a protocol error).
func TestSharedBodyReachesTheClient(t *testing.T) {
	l, ch, c, worker := channelWithRequest(t)
	shared, mem, _ := newTestShared(t)
	ch.shared = shared
	far := readableClient(t, l, c)

	body := strings.Repeat("shared body. ", 10<<10) // 130 KiB
	copy(mem[sharedHeader+4096:], body)
	rh := message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte("content-length"), Value: []byte("133120")}}}
	out := appendFrame(nil, frame.TypeResponse, 0, 1, rh.Append(nil))
	out = appendFrame(out, frame.TypeDataShared, 0, 1, sharedRef(4096, uint32(len(body))))
	fromWorker(t, l, ch, worker, out)
	l.flush()
	if ch.fd < 0 {
		t.Fatal("the channel was closed")
	}
	if got := binary.NativeEndian.Uint64(mem); got != 4096+uint64(len(body)) {
		t.Fatalf("the worker sees the released position %d, not %d", got, 4096+len(body))
	}
	var got []byte
	buf := make([]byte, 256<<10)
	for len(got) < len(body) {
		n, err := unix.Read(far, buf)
		if err != nil || n == 0 {
			t.Fatalf("reading the answer: %v after %d bytes", err, len(got))
		}
		got = append(got, buf[:n]...)
		l.flush()
	}
	_, rest, _ := strings.Cut(string(got), "\r\n\r\n")
	if rest != body[:len(rest)] || len(rest) == 0 {
		t.Fatalf("the client got %q... after the head", rest[:min(len(rest), 40)])
	}

	// The next one names bytes already released: refused, the channel closed.
	c.req.inst, l.f.router = &lifecycle.Instance{}, &front.Router{}
	c2 := &client{fd: -1, req: &request{stream: 3, on: ch, window: 256 << 10, declared: -1, gotHead: true, inst: &lifecycle.Instance{}}}
	ch.streams[3], ch.next = c2, 5
	fromWorker(t, l, ch, worker, appendFrame(nil, frame.TypeDataShared, 0, 3, sharedRef(0, 100)))
	if ch.fd >= 0 {
		t.Fatal("a DATA_SHARED naming released bytes left the channel open")
	}
}

// A worker that sends DATA_SHARED on a channel with no shared buffer (a
// transport that cannot pass one) breaks the protocol.
func TestSharedFrameWithoutABufferClosesTheChannel(t *testing.T) {
	l, ch, c, worker := channelWithRequest(t)
	c.req.gotHead, c.req.inst, l.f.router = true, &lifecycle.Instance{}, &front.Router{}
	fromWorker(t, l, ch, worker, appendFrame(nil, frame.TypeDataShared, 0, 1, sharedRef(0, 100)))
	if ch.fd >= 0 {
		t.Fatal("DATA_SHARED without a shared buffer left the channel open")
	}
}

// Request body pieces go into the request ring while it has room, in
// DATA_SHARED frames; the worker's word on what it has taken counts only
// when it is plausible.
func TestSharedRequestRing(t *testing.T) {
	b, mem, _ := newTestShared(t)
	ring := mem[sharedHeader+responseRing:]
	const size = requestRing * 3 / 8 // two fit, not three
	piece := func(c byte) []byte { return []byte(strings.Repeat(string(c), size)) }
	for i, c := range []byte("ab") {
		pos, ok := b.putRequest(piece(c))
		if !ok || pos != uint64(i*size) || ring[pos] != c || ring[pos+size-1] != c {
			t.Fatalf("piece %d: at %d, %v", i, pos, ok)
		}
	}
	if _, ok := b.putRequest(piece('c')); ok {
		t.Fatal("a third piece fit in the ring with nothing taken")
	}
	// A worker that says it took more than it was given: ignored.
	binary.NativeEndian.PutUint64(mem[requestReleasedAt:], 10*requestRing)
	if _, ok := b.putRequest(piece('c')); ok {
		t.Fatal("a worker's claim past what it was given made room")
	}
	// It took the first piece: the third does not fit before the ring's
	// end and goes at its start.
	binary.NativeEndian.PutUint64(mem[requestReleasedAt:], size)
	pos, ok := b.putRequest(piece('c'))
	if !ok || pos != requestRing || ring[0] != 'c' {
		t.Fatalf("the third piece: at %d, %v", pos, ok)
	}
	// The ring is full (the skipped end counts), and going back on what
	// it said changes nothing.
	binary.NativeEndian.PutUint64(mem[requestReleasedAt:], 0)
	if _, ok := b.putRequest([]byte("d")); ok || b.taken != size {
		t.Fatalf("after the worker went back on what it took: room %v, taken %d", ok, b.taken)
	}
	binary.NativeEndian.PutUint64(mem[requestReleasedAt:], requestRing+size)
	if pos, ok := b.putRequest([]byte("d")); !ok || pos != requestRing+size || ring[size] != 'd' {
		t.Fatalf("a piece once all was taken: at %d, %v", pos, ok)
	}
}

// The loop sends a big piece of request body as DATA_SHARED, a small one
// as DATA.
func TestSharedRequestBodyFrames(t *testing.T) {
	l, ch, _, worker := channelWithRequest(t)
	shared, mem, _ := newTestShared(t)
	ch.shared = shared
	big := []byte(strings.Repeat("upload ", 8<<10)) // 56 KiB
	l.sendData(ch, 0, 1, big)
	l.sendData(ch, frame.FlagFin, 1, []byte("end"))
	l.writeChannel(ch)
	got := make([]byte, 1<<10)
	n, err := unix.Read(worker, got)
	if err != nil {
		t.Fatal(err)
	}
	got = got[:n]
	fh := frame.ParseHeader(got)
	if fh.Type != frame.TypeDataShared || fh.Flags != 0 || fh.StreamID != 1 || fh.Length != sharedRefSize {
		t.Fatalf("the big piece went as %v", fh)
	}
	pos, size := binary.BigEndian.Uint64(got[frame.HeaderSize:]), binary.BigEndian.Uint32(got[frame.HeaderSize+8:])
	at := sharedHeader + responseRing + pos
	if int(size) != len(big) || string(mem[at:at+uint64(size)]) != string(big) {
		t.Fatalf("the ring holds %d bytes at %d, not the piece", size, pos)
	}
	rest := got[frame.HeaderSize+sharedRefSize:]
	if fh := frame.ParseHeader(rest); fh.Type != frame.TypeData || fh.Flags != frame.FlagFin || string(rest[frame.HeaderSize:]) != "end" {
		t.Fatalf("the small piece went as %v %q", fh, rest[frame.HeaderSize:])
	}
}

// The loop keeps the buffer only when the worker's HELLO says it took it:
// a worker that did not (another implementation, or one that could not
// map it) gets no DATA_SHARED.
func TestGreetKeepsTheBufferOnlyIfTheWorkerTookIt(t *testing.T) {
	for _, took := range []bool{false, true} {
		loopEnd, workerEnd := socketPair(t)
		done := make(chan error, 1)
		go func() {
			defer unix.Close(workerEnd)
			buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(4))
			var got int
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				n, oobn, _, _, err := unix.Recvmsg(workerEnd, buf, oob, 0)
				if err == unix.EAGAIN {
					continue
				}
				if err != nil || n == 0 {
					done <- fmt.Errorf("reading the host's HELLO: %d bytes, %v", n, err)
					return
				}
				msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
				for _, m := range msgs {
					fds, _ := unix.ParseUnixRights(&m)
					for _, fd := range fds {
						unix.Close(fd)
						got++
					}
				}
				break
			}
			if got != 1 {
				done <- fmt.Errorf("the host's HELLO came with %d descriptors, not 1", got)
				return
			}
			h := message.Hello{Version: 1, Role: 2, MaxFrameSize: 64 << 10, InitialWindow: 256 << 10, MaxStreams: 8}
			if took {
				h.SharedBuffer = 1
			}
			_, err := unix.Write(workerEnd, appendFrame(nil, frame.TypeHello, 0, 0, h.Append(nil)))
			done <- err
		}()
		fd, _, shared, err := greet(os.NewFile(uintptr(loopEnd), "channel"), "test", slog.New(slog.DiscardHandler))
		if werr := <-done; werr != nil {
			t.Fatal(werr)
		}
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		if (shared != nil) != took {
			t.Errorf("the worker took the buffer: %v; the loop kept it: %v", took, shared != nil)
		}
		shared.close()
	}
}
