package metrics

import (
	"fmt"
	"sync"
	"time"
)

// RecentRequests is how many of the last requests Metrics keeps for the
// status page.
const RecentRequests = 50

// RequestRecord is one relayed request.
type RequestRecord struct {
	Time    time.Time // when it started
	Program string
	Method  string
	Path    string
	Status  int
	Took    time.Duration
	ID      string // the request's id: the client's, or the agent's own
	AppID   string // the app's own X-Request-Id (what the client saw), when it sent another
	Node    string // the node that ran it, when this one forwarded it there
	// Unreached says the request never reached that node (it could not
	// be dialled, or the hop ended before the request was sent): it ran
	// on no node, and this one's answer is counted as its own too.
	Unreached bool
}

// recentRequests is a ring of the last RecentRequests requests.
type recentRequests struct {
	mu   sync.Mutex
	ring [RecentRequests]RequestRecord
	next int // where the next one goes
	n    int // how many are kept
}

func (r *recentRequests) add(rec RequestRecord) {
	r.mu.Lock()
	r.ring[r.next] = rec
	r.next = (r.next + 1) % len(r.ring)
	r.n = min(r.n+1, len(r.ring))
	r.mu.Unlock()
}

// Recent returns the last requests, newest first.
func (m *Metrics) Recent() []RequestRecord {
	r := &m.recent
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]RequestRecord, 0, r.n)
	for i := 1; i <= r.n; i++ {
		out = append(out, r.ring[(r.next-i+len(r.ring))%len(r.ring)])
	}
	return out
}

// Histogram is one program's cold starts as the metrics count them.
type Histogram struct {
	Program string
	Count   uint64
	Sum     float64 // seconds
	// Buckets count the boots that took more than the bucket before's
	// bound and at most this one's (not cumulative, unlike
	// Prometheus'); the last bound is +Inf.
	Buckets []Bucket
}

// Bucket is one bar of a Histogram.
type Bucket struct {
	UpperBound float64 // seconds
	Count      uint64
}

// ColdStarts returns each program's histogram of cold-start seconds
// (ferry_cold_start_seconds), by program id.
func (m *Metrics) ColdStarts() ([]Histogram, error) {
	families, err := m.registry.Gather()
	if err != nil {
		return nil, fmt.Errorf("metrics: gathering: %w", err)
	}
	var out []Histogram
	for _, f := range families {
		if f.GetName() != coldStartName {
			continue
		}
		for _, metric := range f.GetMetric() {
			h := Histogram{Count: metric.GetHistogram().GetSampleCount(), Sum: metric.GetHistogram().GetSampleSum()}
			for _, l := range metric.GetLabel() {
				if l.GetName() == "program" {
					h.Program = l.GetValue()
				}
			}
			var below uint64 // cumulative count of the buckets so far
			for _, b := range metric.GetHistogram().GetBucket() {
				h.Buckets = append(h.Buckets, Bucket{UpperBound: b.GetUpperBound(), Count: b.GetCumulativeCount() - below})
				below = b.GetCumulativeCount()
			}
			if n := len(h.Buckets); n == 0 || h.Buckets[n-1].UpperBound != inf {
				h.Buckets = append(h.Buckets, Bucket{UpperBound: inf, Count: h.Count - below})
			}
			out = append(out, h)
		}
	}
	return out, nil
}
