// Package statuspage renders the agent's status page: the programs, the
// cluster's nodes, the running VMs with each one's boot drawn as a
// waterfall next to its program's cold-start histogram, and the recent
// requests and errors. It is plain HTML from html/template (embedded),
// with no script: the admin API serves it (read-only, behind the API's
// token) from a View it gathers.
package statuspage

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"time"

	"github.com/ferry-vm/ferry/host/logsink"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/protocol/message"
)

// View is what the page shows.
type View struct {
	Generated time.Time
	// Node is this agent's node name in a cluster, Leader the cluster's
	// leader (both empty without a cluster).
	Node, Leader string
	Backend      string
	Programs     []Program
	Nodes        []Node
	Requests     []metrics.RequestRecord // newest first
	Errors       []logsink.Record        // oldest first, as kept
	ColdStarts   []metrics.Histogram
	// Refresh, when positive, reloads the page every so many seconds.
	Refresh int
}

// Program is one deployed program.
type Program struct {
	ID, Interface, Entrypoint string
	HTTP, Persistent, Running bool
	VM                        string
	Started                   time.Time
	Node                      string // where a persistent program runs in a cluster
	ColdStart                 time.Duration
	// Timeline is the running VM's boot timeline as init reported it.
	Timeline []message.TimelineEntry
}

// Node is one node of the cluster.
type Node struct {
	Name, Address, Role string
	Leader              bool
	VCPUs, MemoryMiB    int
	LastHeartbeat       string // "1.2s ago", "-"
}

//go:embed status.html
var pageSource string

var page = template.Must(template.New("status").Funcs(template.FuncMap{
	"ms":        millis,
	"seconds":   seconds,
	"pct":       func(f float64) string { return fmt.Sprintf("%.2f%%", 100*f) },
	"clock":     func(t time.Time) string { return t.UTC().Format("15:04:05.000") },
	"waterfall": Waterfall,
	"bars":      Bars,
	"mean": func(h *metrics.Histogram) string {
		if h.Count == 0 {
			return "-"
		}
		return seconds(h.Sum / float64(h.Count))
	},
	"histogram": func(v *View, program string) *metrics.Histogram {
		for i := range v.ColdStarts {
			if v.ColdStarts[i].Program == program {
				return &v.ColdStarts[i]
			}
		}
		return nil
	},
}).Parse(pageSource))

// Write renders v as HTML.
func Write(w http.ResponseWriter, v *View) {
	var b bytes.Buffer
	if err := page.Execute(&b, v); err != nil {
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

// Phase is one bar of a boot waterfall: a phase of init's timeline, from
// when the one before ended to when it ended, and where it stands on the
// waterfall's scale (fractions of its width).
type Phase struct {
	Name         string
	Start, End   time.Duration // since the kernel started
	Left, Width  float64       // of the scale, 0 to 1
	OutsideScale bool          // the kernel of a sandbox: the host's, before this VM
}

// Duration is how long the phase took.
func (p Phase) Duration() time.Duration { return p.End - p.Start }

// Waterfall lays out a VM's boot timeline: each phase from the end of
// the one before (the first, "kernel", from the kernel's start) to its
// own end, scaled to the whole boot. A first phase longer than the cold
// start itself is a kernel that did not start with this VM (a sandbox
// runs on the host's, and CLOCK_BOOTTIME counts the host's uptime): it is
// listed but left out of the scale, which then starts where it ended.
func Waterfall(timeline []message.TimelineEntry, coldStart time.Duration) []Phase {
	if len(timeline) == 0 {
		return nil
	}
	var phases []Phase
	var prev time.Duration
	for _, e := range timeline {
		end := time.Duration(e.BootNano)
		phases = append(phases, Phase{Name: string(e.Phase), Start: prev, End: max(end, prev)})
		prev = max(end, prev)
	}
	origin := time.Duration(0)
	if phases[0].End > coldStart && coldStart > 0 {
		phases[0].OutsideScale = true
		origin = phases[0].End
	}
	span := float64(prev - origin)
	for i := range phases {
		p := &phases[i]
		if p.OutsideScale || span <= 0 {
			continue
		}
		p.Left = float64(p.Start-origin) / span
		p.Width = float64(p.End-p.Start) / span
	}
	return phases
}

// Bar is one bucket of a histogram as drawn: its label and its height as
// a fraction of the tallest.
type Bar struct {
	Label  string
	Count  uint64
	Height float64
}

// Bars lays out a cold-start histogram: from its first bucket with a
// count to its last, labelled by upper bound ("≤ 80ms", "> 82s" for the
// last).
func Bars(h *metrics.Histogram) []Bar {
	if h == nil {
		return nil
	}
	first, last := -1, -1
	var most uint64
	for i, b := range h.Buckets {
		if b.Count > 0 {
			if first < 0 {
				first = i
			}
			last = i
			most = max(most, b.Count)
		}
	}
	if first < 0 {
		return nil
	}
	var bars []Bar
	for i := first; i <= last; i++ {
		b := h.Buckets[i]
		label := "≤ " + seconds(b.UpperBound)
		if math.IsInf(b.UpperBound, 1) {
			label = "> " + seconds(h.Buckets[max(i-1, 0)].UpperBound)
		}
		bars = append(bars, Bar{Label: label, Count: b.Count, Height: float64(b.Count) / float64(most)})
	}
	return bars
}

// millis is a duration for people: "850ms", "1.25s".
func millis(d time.Duration) string {
	if d < time.Second {
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

// seconds is a number of seconds for people.
func seconds(s float64) string {
	if math.IsInf(s, 1) {
		return "∞"
	}
	return millis(time.Duration(s * float64(time.Second)))
}
