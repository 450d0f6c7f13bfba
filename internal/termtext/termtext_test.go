package termtext

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
)

// Terminal controls are written as escapes; text, tabs and backslashes
// stay as they are.
func TestAppendVisible(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"OSC 52 sets the clipboard", "a\x1b]52;c;cm0gLXJmIC8K\x07b", `a\x1b]52;c;cm0gLXJmIC8K\x07b`},
		{"CSI clears and moves", "\x1b[2J\x1b[1;1Hgone", `\x1b[2J\x1b[1;1Hgone`},
		{"OSC 0 retitles", "\x1b]0;owned\x1b\\", `\x1b]0;owned\x1b\`},
		{"NUL", "a\x00b", `a\x00b`},
		{"carriage return hides the start", "secret\rpublic", `secret\x0dpublic`},
		{"backspace and DEL", "ab\x08\x7f", `ab\x08\x7f`},
		{"tab is kept", "a\tb", "a\tb"},
		{"Unicode text is kept", "héllo — 日本語 🚢", "héllo — 日本語 🚢"},
		{"C1 CSI (U+009B)", "\u009b2J", `\u009b2J`},
		{"C1 bounds", "\u0080\u009f\u00a0", `\u0080\u009f` + "\u00a0"},
		{"invalid UTF-8", "a\xff\xfeb", `a\xff\xfeb`},
		{"a raw C1 byte is invalid UTF-8", "\x9b2J", `\x9b2J`},
		{"a cut multi-byte character", "日\xe6\x97", `日\xe6\x97`},
		{"an overlong encoding", "\xc0\xaf", `\xc0\xaf`},
		{"backslash is kept", `C:\temp \x41`, `C:\temp \x41`},
		{"a right-to-left override shows other text", "ok \u202etxt.exe\u202c done", `ok \u202etxt.exe\u202c done`},
		{"every embedding, override and isolate", "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069", `\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069`},
		{"their neighbours and the marks are kept", "\u2029\u202f\u2065\u206a\u200e\u200f", "\u2029\u202f\u2065\u206a\u200e\u200f"},
		{"right-to-left text is kept", "שלום مرحبا", "שלום مرحبا"},
		{"empty", "", ""},
	} {
		if got := string(AppendVisible(nil, []byte(c.in))); got != c.want {
			t.Errorf("%s: %q printed as %q, want %q", c.name, c.in, got, c.want)
		}
	}
}

// AppendJSONVisible escapes DEL, the C1 range and the bidi controls, and
// nothing else.
func TestAppendJSONVisible(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`"a\u001b"`, `"a\u001b"`},
		{"\"\u0080\u009f\u00a0é\"", "\"\\u0080\\u009f\u00a0é\""},
		{"\"\x7f🚢\"", "\"\\u007f🚢\""},
		{"{\"k\u009b\":1}", `{"k\u009b":1}`},
		{"\"ok \u202etxt.exe\u2069 \u2029\u200f שלום\"", "\"ok \\u202etxt.exe\\u2069 \u2029\u200f שלום\""},
	} {
		if got := string(AppendJSONVisible(nil, []byte(c.in))); got != c.want {
			t.Errorf("%q written as %q, want %q", c.in, got, c.want)
		}
		var a, b any
		if json.Unmarshal([]byte(c.in), &a) != nil || json.Unmarshal([]byte(c.want), &b) != nil || fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("%q: not the same JSON value", c.in)
		}
	}
}

// JSONWriter passes each record on with the escapes, and reports the
// length it was given.
func TestJSONWriter(t *testing.T) {
	var out bytes.Buffer
	rec := "{\"line\":\"a\u202eb\u009bc\"}\n"
	n, err := JSONWriter(&out).Write([]byte(rec))
	if err != nil || n != len(rec) {
		t.Fatalf("wrote %d of %d: %v", n, len(rec), err)
	}
	if want := `{"line":"a\u202eb\u009bc"}` + "\n"; out.String() != want {
		t.Fatalf("got %q, want %q", out.String(), want)
	}
}
