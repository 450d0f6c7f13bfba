package mux

import (
	"io"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
)

// Sizes that shape the writer.
const (
	// writeBufferLimit is how many queued bytes make a stream writer wait
	// until the connection drains.
	writeBufferLimit = 256 << 10
	// controlBufferLimit bounds the queue even for control frames (which
	// never wait): a peer that stops reading while provoking acknowledgements
	// loses its connection instead of our memory.
	controlBufferLimit = 8 << 20
	// directWriteMin is the payload size from which an idle writer sends
	// header and payload with one vectored write instead of copying.
	directWriteMin = 16 << 10
)

// appender encodes a payload by appending it to a buffer; the message types
// implement it.
type appender interface {
	Append([]byte) []byte
}

// writer serialises frames onto the connection. A caller that finds the
// writer idle performs the write itself (no goroutine hop on the fast path);
// callers that arrive while a write is in progress queue their frame and
// return, and the writing caller sends everything queued in one syscall.
// Control frames from the read loop never write themselves: they queue and
// wake the background flusher, so the read loop never blocks on the
// connection.
type writer struct {
	conn io.Writer

	mu       sync.Mutex
	drained  sync.Cond // signalled when queued bytes fall below the limit
	buf      []byte    // frames waiting to be written
	spare    []byte    // the other buffer, swapped in while buf is written
	flushing bool      // a goroutine is writing to conn
	err      error     // first write error; every later write fails with it

	kick chan struct{} // wakes the background flusher
}

func newWriter(conn io.Writer) *writer {
	w := &writer{conn: conn, kick: make(chan struct{}, 1)}
	w.drained.L = &w.mu
	return w
}

// frameSpec is one frame to write: a raw payload or an encoder.
type frameSpec struct {
	h       frame.Header
	payload []byte   // used when enc is nil
	enc     appender // encodes the payload in place
	// limit, when set, is the largest payload the peer accepts: a head
	// (REQUEST, RESPONSE, END) that encodes larger fails the write with
	// ErrHeadTooLarge, and none of the write's frames is queued.
	limit uint32
}

// write queues frames (written back to back, nothing in between) and, unless
// control is set, writes the queue if no other goroutine is writing. It
// returns the connection's write error, if any.
func (w *writer) write(frames []frameSpec, control bool) error {
	for _, f := range frames {
		if f.limit > 0 && f.enc == nil && len(f.payload) > int(f.limit) {
			return headTooLarge(f.h.Type, len(f.payload), f.limit)
		}
	}
	w.mu.Lock()
	if !control {
		for len(w.buf) >= writeBufferLimit && w.err == nil {
			w.drained.Wait()
		}
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	if control && len(w.buf) > controlBufferLimit {
		w.failLocked(errPeerNotReading)
		w.mu.Unlock()
		return errPeerNotReading
	}
	if !control && !w.flushing && len(w.buf) == 0 && rawSize(frames) >= directWriteMin {
		// Idle and large: write headers and payloads without copying, in
		// one vectored write.
		w.flushing = true
		w.mu.Unlock()
		bufs := vectored(frames)
		_, err := bufs.WriteTo(w.conn)
		w.mu.Lock()
		if err != nil {
			w.failLocked(err)
		}
		w.flushLocked()
		w.mu.Unlock()
		return err
	}
	start := len(w.buf)
	for _, f := range frames {
		if n := w.appendLocked(f); f.limit > 0 && n > int(f.limit) {
			w.dropFromLocked(start)
			w.mu.Unlock()
			return headTooLarge(f.h.Type, n, f.limit)
		}
	}
	switch {
	case w.flushing:
	case control:
		select {
		case w.kick <- struct{}{}:
		default:
		}
	default:
		w.flushing = true
		if len(w.buf) < directWriteMin {
			// Let goroutines that are ready to run (other streams woken by
			// the same read) queue their frames first: under load many
			// small frames then share one syscall. When nothing else is
			// ready this costs a trip through the scheduler, not a wait.
			w.mu.Unlock()
			runtime.Gosched()
			w.mu.Lock()
		}
		w.flushLocked()
	}
	err := w.err
	w.mu.Unlock()
	return err
}

// rawSize returns the payload bytes of frames when none has an encoder
// (they can be written as they are), else 0.
func rawSize(frames []frameSpec) int {
	n := 0
	for _, f := range frames {
		if f.enc != nil {
			return 0
		}
		n += len(f.payload)
	}
	return n
}

// vectored returns frames (raw payloads) as buffers for one vectored
// write: each header, then its payload.
func vectored(frames []frameSpec) net.Buffers {
	hdrs := make([]byte, 0, frame.HeaderSize*len(frames))
	bufs := make(net.Buffers, 0, 2*len(frames))
	for _, f := range frames {
		f.h.Length = uint32(len(f.payload))
		start := len(hdrs)
		hdrs = frame.AppendHeader(hdrs, f.h)
		bufs = append(bufs, hdrs[start:len(hdrs):len(hdrs)])
		if len(f.payload) > 0 {
			bufs = append(bufs, f.payload)
		}
	}
	return bufs
}

// writeOne writes a single frame; see write.
func (w *writer) writeOne(f frameSpec, control bool) error {
	frames := [1]frameSpec{f}
	return w.write(frames[:], control)
}

// appendLocked encodes f at the end of the queue and returns the length
// of its payload.
func (w *writer) appendLocked(f frameSpec) int {
	start := len(w.buf)
	if f.enc == nil {
		f.h.Length = uint32(len(f.payload))
		w.buf = frame.AppendHeader(w.buf, f.h)
		w.buf = append(w.buf, f.payload...)
		return len(f.payload)
	}
	w.buf = frame.AppendHeader(w.buf, f.h)
	w.buf = f.enc.Append(w.buf)
	n := uint32(len(w.buf) - start - frame.HeaderSize)
	// Patch the length now that the payload is encoded.
	h := f.h
	h.Length = n
	frame.AppendHeader(w.buf[start:start], h)
	return int(n)
}

// dropFromLocked removes what was queued from offset start on (a refused
// head). A queue that grew for it is not kept: a hostile head must not
// leave its size behind in the session's buffers.
func (w *writer) dropFromLocked(start int) {
	w.buf = w.buf[:start]
	if cap(w.buf) > 2*writeBufferLimit {
		w.buf = append(make([]byte, 0, start), w.buf...)
	}
}

// flushLocked writes queued frames until the queue is empty, releasing the
// lock during each syscall. The caller has set w.flushing.
func (w *writer) flushLocked() {
	for len(w.buf) > 0 && w.err == nil {
		out := w.buf
		w.buf, w.spare = w.spare[:0], nil
		w.drained.Broadcast()
		w.mu.Unlock()
		_, err := w.conn.Write(out)
		w.mu.Lock()
		w.spare = out[:0]
		if err != nil {
			w.failLocked(err)
		}
	}
	w.flushing = false
	w.drained.Broadcast()
}

// run is the background flusher for control frames. It exits when done is
// closed.
func (w *writer) run(done <-chan struct{}) {
	for {
		select {
		case <-w.kick:
		case <-done:
			return
		}
		w.mu.Lock()
		if !w.flushing {
			w.flushing = true
			w.flushLocked()
		}
		w.mu.Unlock()
	}
}

// failLocked records the first write error and wakes every waiter.
func (w *writer) failLocked(err error) {
	if w.err == nil {
		w.err = err
	}
	w.buf = nil
	w.drained.Broadcast()
}

// fail records err (if first) so that later writes fail fast.
func (w *writer) fail(err error) {
	w.mu.Lock()
	w.failLocked(err)
	w.mu.Unlock()
}

// waitIdle waits up to d for the queue to drain; used to let a final
// GOAWAY reach the peer before the connection is closed.
func (w *writer) waitIdle(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		idle := (len(w.buf) == 0 && !w.flushing) || w.err != nil
		w.mu.Unlock()
		if idle {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
