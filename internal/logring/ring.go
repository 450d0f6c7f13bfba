// Package logring keeps a program's recent output lines: a ring buffer
// bounded by count and bytes, its lines numbered so that a reader can ask
// for what it has not seen yet. init keeps one to replay output to a host
// that connects late; the host agent keeps one per program for
// `program logs`.
package logring

import "sync"

// Entry is one line of program output.
type Entry struct {
	Seq      uint64 // 1, 2, 3… in order of arrival
	Source   string // stdout or stderr
	Origin   int    // worker or process number
	UnixNano int64
	Line     []byte
}

// Ring holds the most recent lines.
type Ring struct {
	maxLines, maxBytes int

	mu      sync.Mutex
	entries []Entry // oldest first
	bytes   int
	next    uint64
}

// NewRing returns a ring keeping at most maxLines lines and maxBytes bytes
// of line text.
func NewRing(maxLines, maxBytes int) *Ring {
	return &Ring{maxLines: maxLines, maxBytes: maxBytes, next: 1}
}

// Add stores a copy of the line and returns its entry.
func (r *Ring) Add(source string, origin int, unixNano int64, line []byte) Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := Entry{Seq: r.next, Source: source, Origin: origin, UnixNano: unixNano, Line: append([]byte(nil), line...)}
	r.next++
	r.entries = append(r.entries, e)
	r.bytes += len(e.Line)
	drop := 0
	for len(r.entries)-drop > r.maxLines || (r.bytes > r.maxBytes && len(r.entries)-drop > 1) {
		r.bytes -= len(r.entries[drop].Line)
		drop++
	}
	if drop > 0 {
		r.entries = append(r.entries[:0:0], r.entries[drop:]...)
	}
	return e
}

// Since returns the kept entries with a sequence number above seq.
func (r *Ring) Since(seq uint64) []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Entry
	for _, e := range r.entries {
		if e.Seq > seq {
			out = append(out, e)
		}
	}
	return out
}
