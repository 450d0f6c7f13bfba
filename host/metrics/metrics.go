// Package metrics holds the host agent's Prometheus metrics: requests by
// program and status, request latency, cold starts and their duration,
// running VMs, dropped output lines. Handler serves them at /metrics and a
// liveness answer at /healthz. For the status page it also keeps the last
// requests (Recent) and reads back the cold-start histograms (ColdStarts).
package metrics

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-vm/ferry/protocol/message"
)

// Metrics is one agent's set of metrics, on its own registry.
type Metrics struct {
	store      storeMetrics // the content-addressed store's (store.go)
	registry   *prometheus.Registry
	requests   *prometheus.CounterVec
	forwarded  *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	coldStarts *prometheus.CounterVec
	coldTime   *prometheus.HistogramVec
	bootPhase  *prometheus.HistogramVec
	logDropped *prometheus.CounterVec
	recent     recentRequests
}

// coldStartName is the cold-start histogram's name; inf the bound of its
// last bucket.
const coldStartName = "ferry_cold_start_seconds"

var inf = math.Inf(1)

// New returns the metrics; running reports how many VMs run right now.
func New(running func() int) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_requests_total", Help: "HTTP requests relayed, by program and response status.",
		}, []string{"program", "status"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_requests_forwarded_total", Help: "HTTP requests for a persistent program relayed to the node that runs it, by program, node and response status (that node counts them in ferry_requests_total).",
		}, []string{"program", "node", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_request_duration_seconds", Help: "Time from request to the end of the response, by program.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"program"}),
		coldStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_cold_starts_total", Help: "VM boots, by program and result (ok or error).",
		}, []string{"program", "result"}),
		coldTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: coldStartName, Help: "Time from starting a VM to its program being ready, by program.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"program"}),
		bootPhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_boot_phase_seconds", Help: "Duration of each phase of init's boot timeline (kernel, modules, mounts, network, app...), by program.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"program", "phase"}),
	}
	m.logDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_program_log_lines_dropped_total", Help: "Lines of program output dropped (over the rate limit, or while the agent's output was slow), by program.",
	}, []string{"program"})
	m.store = newStoreMetrics()
	m.registry.MustRegister(m.store.hits, m.store.misses, m.store.bytes, m.store.cache)
	m.registry.MustRegister(m.requests, m.forwarded, m.latency, m.coldStarts, m.coldTime, m.bootPhase, m.logDropped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_running_vms", Help: "VMs running now."},
			func() float64 { return float64(running()) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Request records one relayed request: counted, and kept among the
// recent ones. A request forwarded to another node (r.Node set) is
// counted in ferry_requests_forwarded_total, and not in
// ferry_requests_total and the durations, which the node that ran it
// counts, so that the sums over a cluster's nodes count each client's
// request once. One that never reached its node (r.Unreached) ran
// nowhere: this node's answer is counted in both.
func (m *Metrics) Request(r RequestRecord) {
	if r.Node != "" {
		m.forwarded.WithLabelValues(r.Program, r.Node, strconv.Itoa(r.Status)).Inc()
	}
	if r.Node == "" || r.Unreached {
		m.requests.WithLabelValues(r.Program, strconv.Itoa(r.Status)).Inc()
		m.latency.WithLabelValues(r.Program).Observe(r.Took.Seconds())
	}
	m.recent.add(r)
}

// OutputDropped records n lines of a program's output dropped.
func (m *Metrics) OutputDropped(program string, n int) {
	m.logDropped.WithLabelValues(program).Add(float64(n))
}

// Boot records one VM boot attempt, with the duration of each phase of
// its timeline (each entry's time since the one before; the first is
// counted from the kernel's start).
func (m *Metrics) Boot(program string, took time.Duration, timeline []message.TimelineEntry, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.coldStarts.WithLabelValues(program, result).Inc()
	if err != nil {
		return
	}
	m.coldTime.WithLabelValues(program).Observe(took.Seconds())
	var prev uint64
	for _, e := range timeline {
		if e.BootNano >= prev {
			m.bootPhase.WithLabelValues(program, string(e.Phase)).Observe(time.Duration(e.BootNano - prev).Seconds())
		}
		prev = e.BootNano
	}
}

// Handler serves /metrics and /healthz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", Healthz)
	return mux
}

// Healthz answers that the agent is alive ("ok"), saying nothing else.
func Healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte("ok\n"))
}

// StatusRecorder wraps a ResponseWriter to learn the status sent; it keeps
// streaming (Flush) working.
type StatusRecorder struct {
	http.ResponseWriter
	Status int
	// Node is the node that answered, when the request was forwarded to
	// the node that runs its persistent program; "" when this one did.
	Node string
	// Unreached says the request never reached Node (see RequestRecord).
	Unreached bool
}

// Switched records 101 Switching Protocols for an upgrade answered on a
// hijacked connection (a reverse proxy writes that head itself, without
// WriteHeader).
func (s *StatusRecorder) Switched() {
	if s.Status == 0 {
		s.Status = http.StatusSwitchingProtocols
	}
}

// WriteHeader implements http.ResponseWriter. An informational status
// (100 Continue, 103 Early Hints) is not the answer: the next one is, but
// 101 Switching Protocols.
func (s *StatusRecorder) WriteHeader(code int) {
	if s.Status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		s.Status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Write implements http.ResponseWriter.
func (s *StatusRecorder) Write(p []byte) (int, error) {
	if s.Status == 0 {
		s.Status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

// Flush implements http.Flusher.
func (s *StatusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *StatusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
