package logring

import (
	"fmt"
	"testing"
)

func TestRingKeepsTheNewestWithinBounds(t *testing.T) {
	r := NewRing(3, 1<<20)
	for i := range 5 {
		r.Add("stdout", 1, int64(i), []byte(fmt.Sprint("line ", i)))
	}
	got := r.Since(0)
	if len(got) != 3 || string(got[0].Line) != "line 2" || got[2].Seq != 5 {
		t.Fatalf("kept %+v", got)
	}
	if s := r.Since(4); len(s) != 1 || string(s[0].Line) != "line 4" {
		t.Fatalf("since 4: %+v", s)
	}
}

func TestRingBoundsBytesButKeepsTheLastLine(t *testing.T) {
	r := NewRing(100, 10)
	r.Add("stderr", 0, 0, []byte("12345678"))
	r.Add("stderr", 0, 0, []byte("abcdefgh"))
	if got := r.Since(0); len(got) != 1 || string(got[0].Line) != "abcdefgh" {
		t.Fatalf("kept %+v", got)
	}
	r.Add("stderr", 0, 0, make([]byte, 50)) // longer than the bound on its own
	if got := r.Since(0); len(got) != 1 || len(got[0].Line) != 50 {
		t.Fatalf("kept %d entries", len(got))
	}
}

func TestRingCopiesLines(t *testing.T) {
	r := NewRing(10, 100)
	b := []byte("mutable")
	r.Add("stdout", 0, 0, b)
	b[0] = 'M'
	if got := r.Since(0); string(got[0].Line) != "mutable" {
		t.Fatalf("line aliased the caller's buffer: %q", got[0].Line)
	}
}
