package logsink

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
)

// Writes reach the output in order, and Close waits for them.
func TestWritesPassInOrder(t *testing.T) {
	var out syncbuf.Buffer
	w := New(&out, 0)
	var want strings.Builder
	for i := range 100 {
		line := fmt.Sprintf("line %d\n", i)
		w.Write([]byte(line))
		want.WriteString(line)
	}
	w.Close(5 * time.Second)
	if out.String() != want.String() || w.Dropped() != 0 {
		t.Fatalf("got %q, dropped %d", out.String(), w.Dropped())
	}
}

// With its output on a pipe nobody reads, Write still returns at once; the
// writes past the budget are dropped and counted, and reported once the
// pipe is read again.
func TestWriteNeverBlocksOnAStuckOutput(t *testing.T) {
	for _, c := range []struct {
		name   string
		new    func(io.Writer, int) *Writer
		notice string
	}{
		{"text", New, "ferry: "},
		{"json", NewJSON, `{"time":`},
	} {
		t.Run(c.name, func(t *testing.T) { testStuckOutput(t, c.new, c.notice) })
	}
}

// testStuckOutput is TestWriteNeverBlocksOnAStuckOutput with a Writer of
// newWriter, whose notice of the dropped lines starts with notice.
func testStuckOutput(t *testing.T, newWriter func(io.Writer, int) *Writer, notice string) {
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	w := newWriter(pw, 4<<10)
	line := []byte(strings.Repeat("x", 99) + "\n")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20000 { // 2 MB: far more than the pipe and the budget hold
			w.Write(line)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Write blocked on a pipe nobody reads")
	}
	if w.Dropped() == 0 {
		t.Fatal("nothing was dropped")
	}
	// Read the pipe: what was kept arrives, then the count of the dropped.
	got := make(chan string, 1)
	go func() {
		var all bytes.Buffer
		buf := make([]byte, 64<<10)
		for !strings.Contains(all.String(), "log lines dropped") {
			n, err := r.Read(buf)
			all.Write(buf[:n])
			if err != nil {
				break
			}
		}
		got <- all.String()
	}()
	select {
	case s := <-got:
		i := strings.Index(s, "log lines dropped: the output did not keep up")
		if i < 0 || len(s) > 200<<10 {
			t.Fatalf("%d bytes, notice missing or too much kept", len(s))
		}
		if start := strings.LastIndexByte(s[:i], '\n') + 1; !strings.HasPrefix(s[start:], notice) {
			t.Fatalf("the notice %q does not start with %q", s[start:i], notice)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no notice of the dropped lines")
	}
	w.Close(time.Second)
	// Writes after Close are dropped, not a panic.
	w.Write(line)
}
