package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/message"
)

func TestBootRecordsEachPhaseOfTheTimeline(t *testing.T) {
	m := New(func() int { return 1 })
	timeline := []message.TimelineEntry{
		{Phase: []byte("kernel"), BootNano: uint64(1500 * time.Millisecond)},
		{Phase: []byte("modules"), BootNano: uint64(1750 * time.Millisecond)},
		{Phase: []byte("app"), BootNano: uint64(4750 * time.Millisecond)},
	}
	m.Boot("hello", 5*time.Second, timeline, nil)
	m.Boot("hello", time.Second, nil, errors.New("no init"))
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`ferry_boot_phase_seconds_sum{phase="kernel",program="hello"} 1.5`,
		`ferry_boot_phase_seconds_sum{phase="modules",program="hello"} 0.25`,
		`ferry_boot_phase_seconds_sum{phase="app",program="hello"} 3`,
		`ferry_cold_starts_total{program="hello",result="ok"} 1`,
		`ferry_cold_starts_total{program="hello",result="error"} 1`,
		`ferry_cold_start_seconds_count{program="hello"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("missing %s", want)
		}
	}
}

func TestDeliveriesAreCounted(t *testing.T) {
	m := New(func() int { return 0 })
	d := m.Deliveries()
	d.Add("tick", "schedule", "ok")
	d.Add("tick", "schedule", "ok")
	d.Add("orders", "message", "failed")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`ferry_event_deliveries_total{kind="schedule",program="tick",result="ok"} 2`,
		`ferry_event_deliveries_total{kind="message",program="orders",result="failed"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("missing %s", want)
		}
	}
}
