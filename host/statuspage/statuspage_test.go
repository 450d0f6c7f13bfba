package statuspage

import (
	"log/slog"
	"math"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/logsink"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/protocol/message"
)

// timeline is init's boot timeline with its phases ending at these
// times since the kernel started.
func timeline(phases ...any) []message.TimelineEntry {
	var out []message.TimelineEntry
	for i := 0; i < len(phases); i += 2 {
		out = append(out, message.TimelineEntry{Phase: []byte(phases[i].(string)), BootNano: uint64(phases[i+1].(time.Duration))})
	}
	return out
}

// A VM's boot is laid out from the kernel's start, each phase from the
// end of the one before; a sandbox's "kernel" (the host's uptime, longer
// than the cold start) stays out of the scale.
func TestWaterfall(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name      string
		timeline  []message.TimelineEntry
		coldStart time.Duration
		want      []Phase
	}{
		{"qemu", timeline("kernel", 1000*ms, "mounts", 1200*ms, "app", 2000*ms), 2500 * ms, []Phase{
			{Name: "kernel", Start: 0, End: 1000 * ms, Left: 0, Width: 0.5},
			{Name: "mounts", Start: 1000 * ms, End: 1200 * ms, Left: 0.5, Width: 0.1},
			{Name: "app", Start: 1200 * ms, End: 2000 * ms, Left: 0.6, Width: 0.4},
		}},
		{"sandbox", timeline("kernel", 5*time.Hour, "mounts", 5*time.Hour+10*ms, "app", 5*time.Hour+50*ms), 80 * ms, []Phase{
			{Name: "kernel", Start: 0, End: 5 * time.Hour, OutsideScale: true},
			{Name: "mounts", Start: 5 * time.Hour, End: 5*time.Hour + 10*ms, Left: 0, Width: 0.2},
			{Name: "app", Start: 5*time.Hour + 10*ms, End: 5*time.Hour + 50*ms, Left: 0.2, Width: 0.8},
		}},
		{"none", nil, time.Second, nil},
	} {
		got := Waterfall(c.timeline, c.coldStart)
		if len(got) != len(c.want) {
			t.Errorf("%s: %+v", c.name, got)
			continue
		}
		for i := range got {
			g, w := got[i], c.want[i]
			if g.Name != w.Name || g.Start != w.Start || g.End != w.End || g.OutsideScale != w.OutsideScale ||
				math.Abs(g.Left-w.Left) > 1e-9 || math.Abs(g.Width-w.Width) > 1e-9 {
				t.Errorf("%s phase %d: %+v, want %+v", c.name, i, g, w)
			}
		}
	}
}

// Bars span the buckets from the first with a count to the last, each as
// tall as its share of the tallest.
func TestBars(t *testing.T) {
	h := &metrics.Histogram{Count: 4, Buckets: []metrics.Bucket{{UpperBound: 0.01, Count: 0}, {UpperBound: 0.02, Count: 2}, {UpperBound: 0.04, Count: 0}, {UpperBound: 0.08, Count: 1}, {UpperBound: math.Inf(1), Count: 1}}}
	got := Bars(h)
	want := []Bar{{"≤ 20ms", 2, 1}, {"≤ 40ms", 0, 0}, {"≤ 80ms", 1, 0.5}, {"> 80ms", 1, 0.5}}
	if len(got) != len(want) {
		t.Fatalf("%+v", got)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("bar %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if Bars(nil) != nil || Bars(&metrics.Histogram{Buckets: []metrics.Bucket{{UpperBound: 1, Count: 0}}}) != nil {
		t.Error("bars of an empty histogram")
	}
}

// The page shows each program, the waterfall of a running VM next to its
// cold-start histogram, the recent requests (errors marked) and the log's
// errors, all escaped.
func TestWrite(t *testing.T) {
	now := time.Now()
	v := &View{Generated: now, Backend: "sandbox", Programs: []Program{
		{ID: "web", Interface: "asgi", Entrypoint: "main:app", HTTP: true, Running: true, VM: "pid 42", Started: now, ColdStart: 2500 * time.Millisecond,
			Timeline: timeline("kernel", time.Second, "network", 1500*time.Millisecond, "app", 2*time.Second)},
		{ID: "idle", Interface: "executable", Entrypoint: "./serve", HTTP: true},
	}, Requests: []metrics.RequestRecord{
		{Time: now, Program: "web", Method: "GET", Path: "/<script>", Status: 502, Took: time.Millisecond, ID: "abc123"},
		{Time: now, Program: "web", Method: "GET", Path: "/own", Status: 200, Took: time.Millisecond, ID: "def456", AppID: "<app>"},
		{Time: now, Program: "keeper", Method: "GET", Path: "/", Status: 200, Took: time.Millisecond, ID: "ghi789", Node: "<node2>"},
	}, Errors: []logsink.Record{
		{Time: now, Level: slog.LevelWarn, Message: "the program failed to answer", RequestID: "abc123", Attrs: []string{"status=502"}},
	}, ColdStarts: []metrics.Histogram{{Program: "web", Count: 1, Sum: 2.5, Buckets: []metrics.Bucket{{UpperBound: 2.56, Count: 1}, {UpperBound: math.Inf(1), Count: 0}}}}}
	rec := httptest.NewRecorder()
	Write(rec, v)
	body := rec.Body.String()
	if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" || rec.Code != 200 {
		t.Fatalf("%d %s", rec.Code, ct)
	}
	for _, want := range []string{
		`<tr class="program" data-program="web">`, `<tr class="program" data-program="idle">`,
		`<div class="waterfall" data-program="web">`,
		`<div class="phase" data-phase="kernel">`, `<div class="phase" data-phase="network">`, `<div class="phase" data-phase="app">`,
		`style="left: 50.00%; width: 25.00%"`, // network: from 1s to 1.5s of 2s
		`<div class="histogram" data-program="web">`, `≤ 2.56s`,
		`<tr class="error">`, `/&lt;script&gt;`, `abc123`, `the program failed to answer`,
		`keeper <span class="meta">(ran on &lt;node2&gt;)</span>`,
		`def456 (the app's: &lt;app&gt;)`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if strings.Contains(body, "<script>") || strings.Contains(body, "<app>") {
		t.Error("a path or an app's request id reached the page unescaped")
	}
}
