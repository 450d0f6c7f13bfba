package app

import (
	"bufio"
	"io"
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
