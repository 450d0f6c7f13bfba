package loopfront

import (
	"bytes"

	"github.com/ferry-vm/ferry/protocol/frame"
)

// queue is a byte queue on one reused array: bytes go in at the end and
// are consumed from the front. The consumed front is reclaimed by moving
// the rest down when more room is needed and at least half the array is
// consumed, so that each byte moves at most once per array-full and a
// steady stream (a 10 MiB upload, a pipelining client) neither grows the
// array nor leaves garbage behind.
type queue struct {
	b   []byte // the array's used part, consumed bytes included
	off int    // where the unconsumed bytes start
	// scanned is how many waiting bytes headEnd has searched (a head
	// that arrives a few bytes at a time is not searched again from its
	// start at each read), and bare whether they hold a bare line feed.
	// Consuming resets both.
	scanned int
	bare    bool
}

// len is how many bytes wait.
func (q *queue) len() int { return len(q.b) - q.off }

// bytes are the waiting bytes, valid until the queue changes.
func (q *queue) bytes() []byte { return q.b[q.off:] }

// consume drops the first n waiting bytes.
func (q *queue) consume(n int) {
	if n > 0 {
		q.scanned, q.bare = 0, false
	}
	q.off += n
	if q.off >= len(q.b) {
		q.b, q.off = q.b[:0], 0
	}
}

// reserve makes room for n more bytes at the end.
func (q *queue) reserve(n int) {
	if cap(q.b)-len(q.b) >= n {
		return
	}
	if q.off > 0 && q.off >= len(q.b)/2 && cap(q.b)-q.len() >= n {
		k := copy(q.b, q.b[q.off:])
		q.b, q.off = q.b[:k], 0
		return
	}
	grown := make([]byte, q.len(), max(2*cap(q.b), q.len()+n, 4<<10))
	copy(grown, q.b[q.off:])
	q.b, q.off = grown, 0
}

// tail returns room for n bytes at the end, for a read; commit adds what
// was read.
func (q *queue) tail(n int) []byte {
	q.reserve(n)
	return q.b[len(q.b) : len(q.b)+n]
}

// commit adds n bytes written into tail.
func (q *queue) commit(n int) { q.b = q.b[:len(q.b)+n] }

// write adds p.
func (q *queue) write(p []byte) {
	q.reserve(len(p))
	q.b = append(q.b, p...)
}

// writeString adds s.
func (q *queue) writeString(s string) {
	q.reserve(len(s))
	q.b = append(q.b, s...)
}

// release frees the array of an empty queue that grew large (a
// connection that took a big body keeps no big buffer while idle).
func (q *queue) release() {
	if q.len() == 0 && cap(q.b) > 64<<10 {
		q.b, q.off = nil, 0
	}
}

// sendFrame queues a whole frame, header and payload.
func (q *queue) sendFrame(t frame.Type, f frame.Flags, id uint32, payload []byte) {
	q.reserve(frame.HeaderSize + len(payload))
	q.b = appendFrame(q.b, t, f, id, payload)
}

// appendFrame appends a whole frame to b.
func appendFrame(b []byte, t frame.Type, f frame.Flags, id uint32, payload []byte) []byte {
	b = frame.AppendHeader(b, frame.Header{Type: t, Flags: f, StreamID: id, Length: uint32(len(payload))})
	return append(b, payload...)
}

// openFrame starts a frame whose payload the caller appends to q.b: it
// makes room for a header and about n payload bytes, appends a blank
// header and returns where the frame starts. The room is made first, as
// reserve may move the waiting bytes down; from here to the frame's end
// only appends happen, which keep offsets. The caller fills the header at
// q.b[at:] once it knows the payload's size (frameSize).
func (q *queue) openFrame(n int) (at int) {
	q.reserve(frame.HeaderSize + n)
	at = len(q.b)
	q.b = append(q.b, make([]byte, frame.HeaderSize)...)
	return at
}

// frameSize is the payload appended after the frame opened at at.
func (q *queue) frameSize(at int) int { return len(q.b) - at - frame.HeaderSize }

// headEnd returns where the request head at the front of the waiting
// bytes ends (the index of its "\r\n\r\n"), or -1 when it has not
// come; bareLF reports a line feed without a carriage return before it in
// a head not yet whole. It searches only the bytes that came since its
// last call.
func (q *queue) headEnd() (end int, bareLF bool) {
	b := q.bytes()
	from := max(q.scanned-3, 0) // "\r\n\r\n" may straddle the old end
	if i := bytes.Index(b[from:], []byte("\r\n\r\n")); i >= 0 {
		q.scanned = from + i // found again at once if asked again
		return from + i, false
	}
	q.scanned = len(b)
	q.bare = q.bare || hasBareLF(b, from)
	return -1, q.bare
}

// hasBareLF reports whether b, from index from, has a line feed not after
// a carriage return: a head that net/http reads (it ends lines at '\n')
// but the loop's parser refuses, and whose end "\r\n\r\n" may never
// come.
func hasBareLF(b []byte, from int) bool {
	for i := from; ; i++ {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return false
		}
		if i += j; i == 0 || b[i-1] != '\r' {
			return true
		}
	}
}
