package metrics

import "github.com/prometheus/client_golang/prometheus"

// storeMetrics are the content-addressed store's (host/store).
type storeMetrics struct {
	hits, misses, bytes prometheus.Counter
	cache               prometheus.Gauge
}

func newStoreMetrics() storeMetrics {
	return storeMetrics{
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_store_hits_total", Help: "Objects named by ref found in the cache."}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_store_misses_total", Help: "Objects named by ref not in the cache, waited for while downloaded (a download shared by several boots counts for each)."}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_store_downloaded_bytes_total", Help: "Bytes received from stores (objects refused for their digest included)."}),
		cache: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_store_cache_bytes", Help: "Bytes of the objects in the cache."}),
	}
}

// StoreHit implements store.Recorder.
func (m *Metrics) StoreHit() { m.store.hits.Inc() }

// StoreMiss implements store.Recorder.
func (m *Metrics) StoreMiss() { m.store.misses.Inc() }

// StoreDownloaded implements store.Recorder.
func (m *Metrics) StoreDownloaded(n int64) { m.store.bytes.Add(float64(n)) }

// StoreCacheBytes implements store.Recorder.
func (m *Metrics) StoreCacheBytes(n int64) { m.store.cache.Set(float64(n)) }
