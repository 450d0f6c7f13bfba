package app

import (
	"io"
	"strings"
	"sync"

	"github.com/ferry-vm/ferry/internal/lines"
	"github.com/ferry-vm/ferry/internal/logring"
)

// MaxLineLength bounds one captured output line; longer lines are split.
// A line travels to the host in one LOG frame, which must stay under the
// session's frame size.
const MaxLineLength = 16 << 10

// Output receives the program's output, a line at a time. Source is
// "stdout" or "stderr"; origin numbers the process (the worker number, or 0
// for an executable). The line has no trailing newline and is only valid
// during the call.
type Output interface {
	Line(source string, origin int, line []byte)
}

// DiscardOutput drops every line.
type DiscardOutput struct{}

// Line implements Output.
func (DiscardOutput) Line(string, int, []byte) {}

// captureLines passes r's lines to out until r ends, splitting lines longer
// than MaxLineLength.
func captureLines(r io.Reader, source string, origin int, out Output) {
	w := lines.NewWriter(lines.Options{Max: MaxLineLength}, func(l []byte) { out.Line(source, origin, l) })
	_, _ = io.Copy(w, r)
	w.Flush()
}

// Bounds of an OutputTail, per origin: enough to show a traceback.
const (
	tailLines = 40
	tailBytes = tailLines * MaxLineLength
)

// OutputTail keeps the last lines of each process's output, to explain a
// program that fails to start.
type OutputTail struct {
	mu    sync.Mutex
	rings map[int]*logring.Ring // by origin
}

// NewOutputTail returns an empty tail.
func NewOutputTail() *OutputTail { return &OutputTail{rings: map[int]*logring.Ring{}} }

// Tee returns an Output that records lines here and passes them to next.
func (t *OutputTail) Tee(next Output) Output { return teeOutput{t, next} }

// Recent returns the kept lines of one origin, oldest first, one a line.
func (t *OutputTail) Recent(origin int) string {
	var b strings.Builder
	for i, e := range t.ring(origin).Since(0) {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.Write(e.Line)
	}
	return b.String()
}

// ring returns origin's ring, made on first use.
func (t *OutputTail) ring(origin int) *logring.Ring {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.rings[origin]
	if r == nil {
		r = logring.NewRing(tailLines, tailBytes)
		t.rings[origin] = r
	}
	return r
}

type teeOutput struct {
	t    *OutputTail
	next Output
}

func (o teeOutput) Line(source string, origin int, line []byte) {
	o.t.ring(origin).Add(source, origin, 0, line)
	o.next.Line(source, origin, line)
}
