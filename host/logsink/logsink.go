// Package logsink writes the host agent's log and its programs' output
// without ever blocking the writer: a Writer queues each write, up to a
// budget of bytes, for a goroutine of its own to pass on; what does not fit
// is dropped, counted, and reported by a line once the output moves again.
// A stderr on a pipe that nobody reads then costs lost lines, never a
// stuck request. Recent, a slog.Handler in front of the agent's own,
// keeps its last warnings and errors for the status page.
package logsink

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// DefaultBudget is how many bytes a Writer holds while its output is slow.
const DefaultBudget = 256 << 10

// Writer is an io.Writer that never blocks. Each Write is kept whole (a log
// record, a line) or dropped whole.
type Writer struct {
	out    io.Writer
	budget int
	json   bool // the notice of dropped writes is a slog JSON record

	mu      sync.Mutex
	queue   [][]byte
	queued  int   // bytes in queue
	dropped int64 // writes dropped since the last notice
	total   int64 // writes dropped in all
	closed  bool

	wake chan struct{} // capacity 1: there is work
	done chan struct{} // closed when the goroutine has ended
}

// New returns a Writer passing writes on to out; budget bounds the bytes
// it holds (DefaultBudget when not positive).
func New(out io.Writer, budget int) *Writer { return newWriter(out, budget, false) }

// NewJSON is New for a log of slog JSON records (one a line): its notice
// of dropped writes is such a record too.
func NewJSON(out io.Writer, budget int) *Writer { return newWriter(out, budget, true) }

func newWriter(out io.Writer, budget int, json bool) *Writer {
	if budget <= 0 {
		budget = DefaultBudget
	}
	w := &Writer{out: out, budget: budget, json: json, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go w.run()
	return w
}

// Write queues a copy of p. It always reports success: a write dropped
// because the output does not keep up is counted, not an error.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || w.queued+len(p) > w.budget {
		w.dropped++
		w.total++
		w.mu.Unlock()
		return len(p), nil
	}
	w.queue = append(w.queue, append([]byte(nil), p...))
	w.queued += len(p)
	select { // under mu, so that Close cannot close wake in between
	case w.wake <- struct{}{}:
	default:
	}
	w.mu.Unlock()
	return len(p), nil
}

// Dropped returns how many writes were dropped since New.
func (w *Writer) Dropped() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}

// Close stops taking writes and waits up to timeout for the queued ones to
// be written.
func (w *Writer) Close(timeout time.Duration) {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.wake)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-time.After(timeout):
	}
}

func (w *Writer) run() {
	defer close(w.done)
	for {
		_, open := <-w.wake
		for {
			w.mu.Lock()
			batch, dropped := w.queue, w.dropped
			w.queue, w.queued, w.dropped = nil, 0, 0
			w.mu.Unlock()
			if len(batch) == 0 && dropped == 0 {
				break
			}
			for _, p := range batch {
				w.out.Write(p)
			}
			if dropped > 0 {
				w.out.Write(w.notice(dropped))
			}
		}
		if !open {
			return
		}
	}
}

// notice is the line that reports n dropped writes.
func (w *Writer) notice(n int64) []byte {
	const msg = "log lines dropped: the output did not keep up"
	if !w.json {
		return fmt.Appendf(nil, "ferry: %d %s\n", n, msg)
	}
	rec, _ := json.Marshal(struct {
		Time    time.Time `json:"time"`
		Level   string    `json:"level"`
		Msg     string    `json:"msg"`
		Dropped int64     `json:"dropped"`
	}{time.Now(), "WARN", msg, n})
	return append(rec, '\n')
}
