package metrics

import (
	"errors"
	"fmt"
	"io"
	"math"
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

// The last requests are kept, newest first, at most RecentRequests.
func TestRecentRequests(t *testing.T) {
	m := New(func() int { return 0 })
	if got := m.Recent(); len(got) != 0 {
		t.Fatalf("recent before any request: %+v", got)
	}
	for i := range RecentRequests + 3 {
		m.Request(RequestRecord{Time: time.Now(), Program: "web", Method: "GET", Path: fmt.Sprint("/", i), Status: 200, ID: fmt.Sprint("id", i)})
	}
	got := m.Recent()
	if len(got) != RecentRequests || got[0].Path != fmt.Sprint("/", RecentRequests+2) || got[len(got)-1].Path != "/3" || got[0].Time.IsZero() {
		t.Fatalf("kept %d, newest %+v, oldest %+v", len(got), got[0], got[len(got)-1])
	}
}

// ColdStarts reads back each program's cold-start histogram, a count per
// bucket (not cumulative), the last one +Inf.
func TestColdStartHistograms(t *testing.T) {
	m := New(func() int { return 0 })
	for _, took := range []time.Duration{15 * time.Millisecond, 15 * time.Millisecond, 300 * time.Millisecond, time.Hour} {
		m.Boot("web", took, nil, nil)
	}
	m.Boot("web", time.Second, nil, errors.New("failed")) // not a cold start
	hs, err := m.ColdStarts()
	if err != nil || len(hs) != 1 {
		t.Fatalf("%+v, %v", hs, err)
	}
	h := hs[0]
	counts := map[float64]uint64{}
	var total uint64
	for _, b := range h.Buckets {
		counts[b.UpperBound] += b.Count
		total += b.Count
	}
	if h.Program != "web" || h.Count != 4 || total != 4 || counts[0.02] != 2 || counts[0.32] != 1 || counts[math.Inf(1)] != 1 {
		t.Fatalf("histogram %+v", h)
	}
	if last := h.Buckets[len(h.Buckets)-1]; !math.IsInf(last.UpperBound, 1) {
		t.Fatalf("last bucket %+v", last)
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

// The status recorded is the answer's: not an informational one before
// it (100 Continue, 103 Early Hints), but 101 Switching Protocols.
func TestStatusRecorderSkipsInformational(t *testing.T) {
	for _, c := range []struct {
		codes []int
		want  int
	}{
		{[]int{100, 201}, 201},
		{[]int{103, 103, 200}, 200},
		{[]int{101}, 101},
		{[]int{404}, 404},
	} {
		rec := &StatusRecorder{ResponseWriter: httptest.NewRecorder()}
		for _, code := range c.codes {
			rec.WriteHeader(code)
		}
		if rec.Status != c.want {
			t.Errorf("after %v: %d, want %d", c.codes, rec.Status, c.want)
		}
	}
}
