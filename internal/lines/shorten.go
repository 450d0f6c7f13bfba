package lines

import "unicode/utf8"

// Shorten returns s cut to at most max bytes and followed by "..." when it
// is longer, the cut made between characters: it moves back at most
// utf8.UTFMax-1 bytes to a character's start (in text that is not UTF-8
// there may be none, and the cut stays where it is).
func Shorten(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for back := 0; back < utf8.UTFMax-1 && cut > 0 && !utf8.RuneStart(s[cut]); back++ {
		cut--
	}
	return s[:cut] + "..."
}
