// Package logring keeps a program's recent output lines: a ring buffer
// bounded by count and bytes, its lines numbered so that a reader can ask
// for what it has not seen yet, or wait for it. init keeps one to replay
// output to a host that connects late; the host agent keeps one per
// program for `program logs` and follows it for `program logs -f`.
package logring

import (
	"context"
	"sync"
)

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
	added   chan struct{} // closed (and replaced) when a line is added; nil until a reader waits
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
	if r.added != nil {
		close(r.added)
		r.added = nil
	}
	return e
}

// Since returns the kept entries with a sequence number above seq.
func (r *Ring) Since(seq uint64) []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.since(seq)
}

// Wait returns the kept entries with a sequence number above seq, waiting
// until there is one or ctx ends (then it returns ctx's error). A reader
// that fell behind the ring gets the oldest kept entries: the first one's
// Seq then says how many it missed.
func (r *Ring) Wait(ctx context.Context, seq uint64) ([]Entry, error) {
	for {
		r.mu.Lock()
		out := r.since(seq)
		if len(out) > 0 {
			r.mu.Unlock()
			return out, nil
		}
		if r.added == nil {
			r.added = make(chan struct{})
		}
		added := r.added
		r.mu.Unlock()
		select {
		case <-added:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// since returns a copy of the entries above seq; r.mu is held. Sequence
// numbers are consecutive, so the first one wanted is found by its
// number.
func (r *Ring) since(seq uint64) []Entry {
	if len(r.entries) == 0 {
		return nil
	}
	skip := 0
	if first := r.entries[0].Seq; seq >= first {
		skip = int(min(seq-first+1, uint64(len(r.entries))))
	}
	if skip == len(r.entries) {
		return nil
	}
	return append([]Entry(nil), r.entries[skip:]...)
}
