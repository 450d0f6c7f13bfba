package logring

import (
	"context"
	"errors"
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
func TestRingWaitReturnsWhatComesLater(t *testing.T) {
	r := NewRing(10, 1<<20)
	r.Add("stdout", 1, 0, []byte("before"))
	got, err := r.Wait(context.Background(), 0)
	if err != nil || len(got) != 1 || string(got[0].Line) != "before" {
		t.Fatalf("kept lines: %+v, %v", got, err)
	}
	done := make(chan []Entry)
	go func() {
		later, err := r.Wait(context.Background(), got[0].Seq)
		if err != nil {
			t.Errorf("wait: %v", err)
		}
		done <- later
	}()
	r.Add("stderr", 2, 0, []byte("after"))
	if later := <-done; len(later) != 1 || string(later[0].Line) != "after" || later[0].Origin != 2 {
		t.Fatalf("waited for %+v", later)
	}
}

func TestRingWaitEndsWithItsContext(t *testing.T) {
	r := NewRing(10, 1<<20)
	r.Add("stdout", 1, 0, []byte("seen"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, err := r.Wait(ctx, 1); !errors.Is(err, context.Canceled) || got != nil {
		t.Fatalf("got %+v, %v; want context.Canceled", got, err)
	}
}

func TestRingSinceAcrossDroppedLines(t *testing.T) {
	r := NewRing(3, 1<<20)
	for i := range 6 {
		r.Add("stdout", 0, 0, []byte(fmt.Sprint(i)))
	}
	for _, c := range []struct {
		seq   uint64
		first uint64
		n     int
	}{{0, 4, 3}, {2, 4, 3}, {4, 5, 2}, {5, 6, 1}, {6, 0, 0}, {99, 0, 0}} {
		got := r.Since(c.seq)
		if len(got) != c.n || (c.n > 0 && got[0].Seq != c.first) {
			t.Errorf("Since(%d) = %+v, want %d lines from %d", c.seq, got, c.n, c.first)
		}
	}
}
