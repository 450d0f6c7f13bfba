// Package termtext makes text from programs safe to print on an
// operator's terminal: the bytes and characters a terminal would act on
// instead of showing (escape sequences, C1 controls, invalid UTF-8, bidi
// overrides) become visible escapes, in plain text and in JSON text alike.
// The admin CLI prints program logs, statuses and errors through it, and
// host-agent run its echo of program output.
package termtext

import (
	"fmt"
	"io"
	"unicode/utf8"
)

// AppendVisible appends b to dst with every byte or character that a
// terminal would act on instead of showing written as an escape, so that
// a program's output printed for people cannot retitle the operator's
// terminal, set its clipboard (OSC 52), move its cursor over earlier
// lines or hide text:
//
//   - C0 controls but tab, ESC among them, and DEL: \x1b, \x00, \r, \x7f;
//   - C1 controls (U+0080 to U+009F, which a terminal may take as CSI or
//     OSC): \u009b;
//   - each byte that is not part of valid UTF-8: \xff;
//   - the bidi controls that reorder the text after them up to the end of
//     the paragraph (embeddings and overrides U+202A to U+202E, isolates
//     U+2066 to U+2069), with which a line can show the operator other
//     text than it holds ("Trojan Source"): \u202e.
//
// Other text, any script's letters and emoji included, is kept as it is;
// right-to-left letters and the marks U+200E and U+200F, which only set
// the direction of a neutral character and reorder nothing past it, too.
// Unlike journalctl, which replaces such a line with "[N blob data]"
// unless --all, the line stays readable; like it, a backslash is left
// alone (the output is for people, not a quoting a parser undoes).
func AppendVisible(dst, b []byte) []byte {
	for len(b) > 0 {
		c := b[0]
		if c < utf8.RuneSelf {
			if c < 0x20 && c != '\t' || c == 0x7f {
				dst = fmt.Appendf(dst, `\x%02x`, c)
			} else {
				dst = append(dst, c)
			}
			b = b[1:]
			continue
		}
		r, size := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && size == 1:
			dst = fmt.Appendf(dst, `\x%02x`, c)
		case r >= 0x80 && r <= 0x9f, isBidiControl(r):
			dst = fmt.Appendf(dst, `\u%04x`, r)
		default:
			dst = append(dst, b[:size]...)
		}
		b = b[size:]
	}
	return dst
}

// isBidiControl reports whether r is a bidi embedding, override or
// isolate (or the pop of one): the characters that reorder what follows.
func isBidiControl(r rune) bool {
	return r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
}

// Visible is s with AppendVisible's escapes: for what the agent passes on
// from a program (a failed delivery's error is the start of the app's
// answer).
func Visible(s string) string {
	return string(AppendVisible(nil, []byte(s)))
}

// AppendJSONVisible appends the JSON text b (valid UTF-8, as
// encoding/json writes it) to dst with the characters a terminal acts on
// that JSON leaves as they are, DEL, the C1 controls (U+0080 to U+009F,
// U+009B being CSI) and the bidi controls AppendVisible escapes, written
// as \u escapes: the same JSON values,
// which print harmlessly. encoding/json already escapes the C0 controls.
// Outside strings JSON text is ASCII, so every such character is in a
// string.
func AppendJSONVisible(dst, b []byte) []byte {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == 0xe2 { // the lead byte of every bidi control
			if r, size := utf8.DecodeRune(b[i:]); isBidiControl(r) {
				dst = fmt.Appendf(dst, `\u%04x`, r)
				i += size - 1
				continue
			}
		}
		switch {
		case c == 0x7f:
			dst = append(dst, `\u007f`...)
		case c == 0xc2 && i+1 < len(b) && b[i+1] >= 0x80 && b[i+1] <= 0x9f:
			dst = fmt.Appendf(dst, `\u%04x`, b[i+1])
			i++
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// JSONWriter returns a writer that writes each JSON text written to it
// (one or more whole JSON values per Write, as log/slog's JSON handler
// writes a record) to w with AppendJSONVisible's escapes.
func JSONWriter(w io.Writer) io.Writer { return jsonWriter{w} }

type jsonWriter struct{ w io.Writer }

func (j jsonWriter) Write(p []byte) (int, error) {
	if _, err := j.w.Write(AppendJSONVisible(make([]byte, 0, len(p)+16), p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
