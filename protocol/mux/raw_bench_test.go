package mux

import (
	"io"
	"testing"
)

// BenchmarkRawUnixPingPong1KiB is the floor for BenchmarkRoundTrip1KiB: 1 KiB
// each way over a bare unix socket pair, with a goroutine answering on the
// other end, as the mux's read loop does.
func BenchmarkRawUnixPingPong1KiB(b *testing.B) {
	x, y := unixPair(b)
	defer x.Close()
	defer y.Close()
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := io.ReadFull(y, buf); err != nil {
				return
			}
			if _, err := y.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := x.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(x, buf); err != nil {
			b.Fatal(err)
		}
	}
}
