package metrics

import "github.com/prometheus/client_golang/prometheus"

// Deliveries counts the events host/trigger delivered to programs:
// ferry_event_deliveries_total{program, kind (schedule or message), result
// (ok, failed or dropped)}.
type Deliveries struct{ total *prometheus.CounterVec }

// Deliveries registers the deliveries' counter with m; call it once.
func (m *Metrics) Deliveries() *Deliveries {
	d := &Deliveries{total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_event_deliveries_total", Help: "Events delivered to programs (schedules, posted messages), by program, kind and result (ok, failed, dropped).",
	}, []string{"program", "kind", "result"})}
	m.registry.MustRegister(d.total)
	return d
}

// Add counts one delivery.
func (d *Deliveries) Add(program, kind, result string) {
	d.total.WithLabelValues(program, kind, result).Inc()
}
