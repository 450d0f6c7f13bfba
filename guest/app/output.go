package app

import (
	"bufio"
	"io"
	"strings"
	"sync"
)

// MaxLineLength bounds one captured output line; longer lines are split.
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
	br := bufio.NewReaderSize(r, MaxLineLength)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if line[len(line)-1] == '\n' {
				line = line[:len(line)-1]
			}
			out.Line(source, origin, line)
		}
		switch err {
		case nil, bufio.ErrBufferFull:
		default:
			return
		}
	}
}

// OutputTail keeps the last lines of each process's output, to explain a
// program that fails to start.
type OutputTail struct {
	mu    sync.Mutex
	lines map[int][]string
}

// tailLines is how many lines an OutputTail keeps per origin.
const tailLines = 40

// NewOutputTail returns an empty tail.
func NewOutputTail() *OutputTail { return &OutputTail{lines: map[int][]string{}} }

// Tee returns an Output that records lines here and passes them to next.
func (t *OutputTail) Tee(next Output) Output { return teeOutput{t, next} }

// Recent returns the kept lines of one origin, oldest first.
func (t *OutputTail) Recent(origin int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines[origin], "\n")
}

type teeOutput struct {
	t    *OutputTail
	next Output
}

func (o teeOutput) Line(source string, origin int, line []byte) {
	o.t.mu.Lock()
	l := append(o.t.lines[origin], string(line))
	if len(l) > tailLines {
		l = l[len(l)-tailLines:]
	}
	o.t.lines[origin] = l
	o.t.mu.Unlock()
	o.next.Line(source, origin, line)
}
