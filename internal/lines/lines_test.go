package lines

import (
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// collect returns a Writer that records its lines as strings.
func collect(opt Options) (*Writer, *[]string) {
	var got []string
	return NewWriter(opt, func(l []byte) { got = append(got, string(l)) }), &got
}

func TestWriterSplitsLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opt    Options
		writes []string
		flush  bool
		want   []string
	}{
		{"whole lines", Options{Max: 16}, []string{"a\nbc\n"}, false, []string{"a", "bc"}},
		{"a line across writes", Options{Max: 16}, []string{"ha", "lf a li", "ne\nnext"}, false, []string{"half a line"}},
		{"flush passes the unfinished line", Options{Max: 16}, []string{"a\nlast"}, true, []string{"a", "last"}},
		{"flush with nothing kept", Options{Max: 16}, []string{"a\n"}, true, []string{"a"}},
		{"empty lines count", Options{Max: 16}, []string{"\n\nx\n"}, false, []string{"", "", "x"}},
		{"a line of Max bytes is whole", Options{Max: 4}, []string{"abcd\n"}, false, []string{"abcd"}},
		{"a longer line goes in pieces", Options{Max: 4}, []string{"abcdefghij\n"}, false, []string{"abcd", "efgh", "ij"}},
		{"exactly two pieces, no empty third", Options{Max: 4}, []string{"abcdefgh\n"}, false, []string{"abcd", "efgh"}},
		{"pieces across writes", Options{Max: 4}, []string{"ab", "cdef", "g", "hi\n"}, false, []string{"abcd", "efgh", "i"}},
		{"an unfinished line is passed on once it is too long", Options{Max: 4}, []string{"abcdef"}, false, []string{"abcd"}},
		{"kept bytes then a long line", Options{Max: 4}, []string{"ab", "cdefghijk\nz"}, true, []string{"abcd", "efgh", "ijk", "z"}},
		{"carriage returns kept by default", Options{Max: 16}, []string{"a\r\n"}, false, []string{"a\r"}},
		{"TrimCR drops them", Options{Max: 16, TrimCR: true}, []string{"boot\r\nhal", "f\r\r\nlast\r"}, true, []string{"boot", "half", "last"}},
		{"TrimCR keeps inner ones", Options{Max: 16, TrimCR: true}, []string{"50%\r100%\r\n"}, false, []string{"50%\r100%"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, got := collect(tc.opt)
			for _, s := range tc.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			if tc.flush {
				w.Flush()
				w.Flush() // a second flush has nothing to pass on
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("lines %q, want %q", *got, tc.want)
			}
		})
	}
}

// A long line written at once is passed on in bounded pieces, and the
// writer keeps no more than Max bytes of it.
func TestWriterBoundsWhatItKeeps(t *testing.T) {
	const max = 64 << 10
	w, got := collect(Options{Max: max, TrimCR: true})
	w.Write([]byte("last"))
	w.Write([]byte(strings.Repeat("x", 70<<10)))
	if len(w.buf) > max {
		t.Fatalf("kept %d bytes", len(w.buf))
	}
	w.Flush()
	if len(*got) != 2 || len((*got)[0]) != max || len((*got)[1]) != 4+70<<10-max {
		t.Fatalf("%d lines", len(*got))
	}
}

// Copying a reader through a Writer passes on every byte, in order, with
// concurrent writers each writing whole lines.
func TestWriterKeepsWholeLinesOfConcurrentWriters(t *testing.T) {
	var mu sync.Mutex
	count := map[string]int{}
	w := NewWriter(Options{Max: 1 << 10}, func(l []byte) {
		mu.Lock()
		count[string(l)]++
		mu.Unlock()
	})
	var wg sync.WaitGroup
	for _, s := range []string{"alpha", "beta"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(w, strings.NewReader(strings.Repeat(s+"\n", 100)))
		}()
	}
	wg.Wait()
	if count["alpha"] != 100 || count["beta"] != 100 || len(count) != 2 {
		t.Fatalf("lines %v", count)
	}
}

func TestNewWriterRefusesNoBound(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for Max 0")
		}
	}()
	NewWriter(Options{}, func([]byte) {})
}
