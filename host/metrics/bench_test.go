package metrics

import (
	"testing"
	"time"
)

// BenchmarkRequest is the cost per request of the metrics: the counters
// and the ring of recent requests (compare BenchmarkRequestCounters).
func BenchmarkRequest(b *testing.B) {
	m := New(func() int { return 0 })
	start := time.Now()
	for b.Loop() {
		m.Request(RequestRecord{Time: start, Program: "web", Method: "GET", Path: "/", Status: 200, Took: time.Millisecond, ID: "0123456789abcdef"})
	}
}

// BenchmarkRequestCounters is BenchmarkRequest without the ring.
func BenchmarkRequestCounters(b *testing.B) {
	m := New(func() int { return 0 })
	for b.Loop() {
		m.requests.WithLabelValues("web", "200").Inc()
		m.latency.WithLabelValues("web").Observe(0.001)
	}
}
