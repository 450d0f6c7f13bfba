// Package lines splits a byte stream into lines with a bound on their
// length: a program's stdout and stderr in init, a VM's console on the
// host. Each user states its own bound, which is what the lines are for:
// init's must fit in a LOG frame, the host's only bounds its memory.
package lines

import (
	"bytes"
	"sync"
)

// Options configure a Writer.
type Options struct {
	// Max is the longest line passed on whole, in bytes; a longer one is
	// passed on in pieces of Max bytes (the last piece shorter). It must
	// be positive.
	Max int
	// TrimCR drops the carriage returns that end a line (a serial
	// console's "\r\n").
	TrimCR bool
}

// Writer is an io.Writer that passes what is written to it on a line at a
// time. It keeps at most Max bytes of an unfinished line. It is safe for
// concurrent use; lines are passed on in the order they were written.
type Writer struct {
	opt  Options
	line func([]byte)

	mu  sync.Mutex
	buf []byte // the unfinished line, at most opt.Max bytes
}

// NewWriter returns a Writer that gives each line, without its newline,
// to line. The slice is valid only during the call. It panics if
// opt.Max is not positive.
func NewWriter(opt Options, line func(line []byte)) *Writer {
	if opt.Max <= 0 {
		panic("lines: Options.Max must be positive")
	}
	return &Writer{opt: opt, line: line}
}

// Write implements io.Writer; it never fails.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			break
		}
		w.end(p[:i])
		p = p[i+1:]
	}
	// The rest is an unfinished line: kept, but for its full pieces.
	p = w.pieces(p)
	w.buf = append(w.buf, p...)
	return n, nil
}

// Flush passes on an unfinished last line, if there is one: the writer's
// source has ended without a newline.
func (w *Writer) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.end(nil)
	}
}

// end passes on the line made of the kept bytes and rest.
func (w *Writer) end(rest []byte) {
	l := w.pieces(rest)
	if len(w.buf) > 0 {
		w.buf = append(w.buf, l...)
		l = w.buf
	}
	if w.opt.TrimCR {
		l = bytes.TrimRight(l, "\r")
	}
	w.line(l)
	w.buf = w.buf[:0]
}

// pieces passes on pieces of Max bytes while the kept bytes and p make
// more than Max, and returns what is left of p. The kept bytes never
// grow past Max.
func (w *Writer) pieces(p []byte) []byte {
	for len(w.buf)+len(p) > w.opt.Max {
		k := w.opt.Max - len(w.buf)
		if len(w.buf) == 0 {
			w.line(p[:k])
		} else {
			w.buf = append(w.buf, p[:k]...)
			w.line(w.buf)
			w.buf = w.buf[:0]
		}
		p = p[k:]
	}
	return p
}
