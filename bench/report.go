package bench

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// containsWord reports whether key matches one of the comma-separated
// patterns in list (a pattern matches when key contains it).
func containsWord(list, key string) bool {
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p != "" && strings.Contains(key, p) {
			return true
		}
	}
	return false
}

func formatKiB(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }

func us(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%d µs", d.Microseconds())
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// find returns the result of design under workload key with procs, if any.
func (r *Report) find(design, key string, procs int) *Result {
	for i := range r.Results {
		x := &r.Results[i]
		if x.Design == design && x.Workload.Key == key && x.Procs == procs && x.Err == nil {
			return x
		}
	}
	return nil
}

// memoryLine summarises the processes' memory: the peak of each process
// (start -> peak when asked).
func memoryLine(mem []ProcMemory, withStart bool) string {
	var parts []string
	for _, m := range mem {
		if withStart {
			parts = append(parts, fmt.Sprintf("%s %.1f→%.1f", m.Name, float64(m.StartKiB)/1024, float64(m.PeakKiB)/1024))
		} else {
			parts = append(parts, fmt.Sprintf("%s %.1f", m.Name, float64(m.PeakKiB)/1024))
		}
	}
	return strings.Join(parts, ", ")
}

// cpuLine is a row's CPU time per request by process name, the busiest
// first, in µs: where the time of a design goes ("host-agent 49, python3
// 18, init 0").
func cpuLine(r Result) string {
	if r.Load.Requests == 0 {
		return ""
	}
	names := make([]string, 0, len(r.CPUByName))
	for name := range r.CPUByName {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := r.CPUByName[names[i]], r.CPUByName[names[j]]
		if a != b {
			return a > b
		}
		return names[i] < names[j]
	})
	parts := make([]string, len(names))
	for i, name := range names {
		perRequest := r.CPUByName[name] / float64(r.Load.Requests) * 1e6
		format := "%s %.0f"
		if perRequest > 0 && perRequest < 10 {
			format = "%s %.1f"
		}
		parts[i] = fmt.Sprintf(format, name, perRequest)
	}
	return strings.Join(parts, ", ")
}

// Target is one goal of issues 7 and 17 and whether this run met it.
type Target struct {
	Goal     string
	Measured string
	Met      bool
	Missing  bool // not measured in this run
}

// initCPULimit is issue 17's bound on init's CPU during the hello-world
// run: init does no per-request work for ASGI on unix and vsock.
const initCPULimit = 0.02 // seconds per 10,000 requests

// has reports whether the run has results of design.
func (r *Report) has(design string) bool {
	for _, x := range r.Results {
		if x.Design == design {
			return true
		}
	}
	return false
}

// Targets evaluates the goals on this run's numbers: issue 17's must-show
// 1–5 (numbered so), then what is left of issue 7's.
func (r *Report) Targets() []Target {
	var out []Target
	ratio := func(goal, design, versus, key string, procs int, min float64) {
		b, a := r.find(design, key, procs), r.find(versus, key, procs)
		if a == nil || b == nil {
			out = append(out, Target{Goal: goal, Missing: true})
			return
		}
		x := b.Load.rate() / a.Load.rate()
		out = append(out, Target{Goal: goal, Met: x >= min,
			Measured: fmt.Sprintf("%.2f× (%.0f vs %.0f req/s)", x, b.Load.rate(), a.Load.rate()) +
				byRound(b.Rates, a.Rates, func(b, a float64) (float64, bool) { return b / a, b/a >= min })})
	}
	// Issue 17's targets for Ferry as it ships (B), and with the
	// net/http front alone (N) when the run has it.
	for _, d := range []string{"B", "N"} {
		if d == "N" && !r.has(d) {
			continue
		}
		for _, procs := range r.Config.Procs {
			ratio(fmt.Sprintf("1. %s ≥ 1.0× A′ req/s, hello, %d process(es)", d, procs), d, "A′", "hello", procs, 1.0)
			ratio(fmt.Sprintf("1. %s ≥ 0.6× A req/s, hello, %d process(es)", d, procs), d, "A", "hello", procs, 0.6)
		}
		for _, procs := range r.Config.Procs {
			ratio(fmt.Sprintf("2. %s ≥ 1.0× A req/s, fastapi, %d process(es)", d, procs), d, "A", "fastapi", procs, 1.0)
		}
		for _, key := range []string{"hello-1conn", "fastapi-1conn"} {
			b, a := r.find(d, key, 1), r.find("A′", key, 1)
			goal := fmt.Sprintf("3. %s p50 ≤ A′ p50, %s", d, key)
			if a == nil || b == nil {
				out = append(out, Target{Goal: goal, Missing: true})
				continue
			}
			out = append(out, Target{Goal: goal, Met: b.Load.P50 <= a.Load.P50,
				Measured: fmt.Sprintf("%s vs %s", us(b.Load.P50), us(a.Load.P50)) +
					byRound(durations(b.P50s), durations(a.P50s), func(b, a float64) (float64, bool) { return b / a, b <= a })})
		}
		for _, key := range []string{"response-1mib", "upload-10mib"} {
			for _, procs := range r.Config.Procs {
				ratio(fmt.Sprintf("4. %s ≥ 0.5× A req/s, %s, %d process(es)", d, key, procs), d, "A", key, procs, 0.5)
			}
		}
		for _, procs := range r.Config.Procs {
			goal := fmt.Sprintf("4. memory flat during the 10 MiB uploads (each %s process grows < 4 MiB), %d process(es)", d, procs)
			up := r.find(d, "upload-10mib", procs)
			if up == nil {
				out = append(out, Target{Goal: goal, Missing: true})
				continue
			}
			var worst int64
			for _, m := range up.Memory {
				worst = max(worst, m.PeakKiB-m.StartKiB)
			}
			out = append(out, Target{Goal: goal, Met: worst < 4<<10,
				Measured: fmt.Sprintf("largest growth %s over %d uploads (%s)", formatKiB(worst), up.Load.Requests, memoryLine(up.Memory, true))})
		}
		for _, procs := range r.Config.Procs {
			goal := fmt.Sprintf("5. %s: init CPU ≤ %.2f s / 10k req, hello, %d process(es)", d, initCPULimit, procs)
			b := r.find(d, "hello", procs)
			cpu, ok := 0.0, false
			if b != nil {
				cpu, ok = b.CPUPer10kOf("init")
			}
			if !ok {
				out = append(out, Target{Goal: goal, Missing: true})
				continue
			}
			out = append(out, Target{Goal: goal, Met: cpu <= initCPULimit,
				Measured: fmt.Sprintf("%.3f s (%.2f s over %d requests)", cpu, b.CPUByName["init"], b.Load.Requests)})
		}
	}
	for _, key := range []string{"hello", "fastapi"} {
		for _, procs := range r.Config.Procs {
			ratio(fmt.Sprintf("issue 7: B ≥ 10× C req/s, %s, %d process(es)", key, procs), "B", "C", key, procs, 10)
		}
	}
	peak := func(name string) (rss, anon int64) {
		for _, x := range r.Results {
			if x.Design != "B" {
				continue
			}
			for _, m := range x.Memory {
				if m.Name == name {
					rss, anon = max(rss, m.PeakKiB), max(anon, m.PeakAnonKiB)
				}
			}
		}
		return rss, anon
	}
	for _, t := range []struct {
		name  string
		limit int64
	}{{"init", 10 << 10}, {"host-agent", 30 << 10}} {
		p, anon := peak(t.name)
		out = append(out, Target{Goal: fmt.Sprintf("issue 7: %s peak RSS ≤ %d MiB (all B runs)", t.name, t.limit>>10),
			Missing: p == 0, Met: p > 0 && p <= t.limit,
			Measured: fmt.Sprintf("%s (anonymous: %s; the rest is the binary's pages)", formatKiB(p), formatKiB(anon))})
	}
	for _, cs := range r.ColdStarts {
		if cs.ID != "plain" {
			continue
		}
		total := cs.Median(func(x ColdStartRun) time.Duration { return x.Total })
		limit := time.Duration(float64(cs.BareImport)*1.2) + 30*time.Millisecond
		out = append(out, Target{Goal: "issue 7: cold start B ≤ 1.2 × bare import + 30 ms, plain ASGI", Met: total <= limit,
			Measured: fmt.Sprintf("%s (limit %s; bare import %s)", ms(total), ms(limit), ms(cs.BareImport))})
	}
	return out
}

// Markdown writes the report as the tables of BENCHMARKS.md.
func (r *Report) Markdown(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "Measured %s, in %s.\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Took.Round(time.Second))
	fmt.Fprintf(w, "- Machine: %d cores, %s, %s RAM, Linux %s\n", m.Cores, m.Model, m.MemTotal, m.Kernel)
	fmt.Fprintf(w, "- Software: %s; %s; %s; %s\n", m.Go, m.Python, m.Nginx, m.Wrk)
	fmt.Fprintf(w, "- Load: wrk %s (one wrk thread; %d connections unless the workload says otherwise); websockets: a Go client; each run %s. Nothing is pinned to a core: the load generator and every process of the design share the %d cores.\n",
		strings.Join(wrkArgs("URL", r.Config.Connections, r.Config.Duration, "report.lua"), " "), r.Config.Connections, r.Config.Duration, m.Cores)
	fmt.Fprintf(w, "- Each workload runs in %d interleaved rounds: every design one after the other, who goes first rotating; all the servers stay up meanwhile (idle). A row is the design's median round (its memory: over all rounds). A target is judged on those medians; its row also gives the same comparison made within each round (the designs of a round share the machine's speed of the moment, which drifts between rounds) and in how many rounds it held.\n", r.Config.Rounds)
	fmt.Fprintf(w, "- CPU is the user+system time of all the design's processes during the run (for B, init's share in brackets: PID 1 of the sandbox); memory is the peak resident set of each process, sampled every %s (MiB).\n\n", sampleEvery)
	if r.Config.FrontProcs > 0 {
		fmt.Fprintf(w, "- The Go front ends (B's host-agent, C's msgpack-front, E's epoll-front) run with GOMAXPROCS=%d, as A′'s nginx runs %s (`-front-procs`).\n", r.Config.FrontProcs, plural(r.Config.FrontProcs, "worker"))
	}
	for _, d := range Designs(r.Config.Prototype) {
		fmt.Fprintf(w, "- **%s**: %s\n", d.Key, d.Name)
	}
	fmt.Fprintln(w)
	seen := map[string]bool{}
	for _, x := range r.Results {
		if seen[x.Workload.Key] {
			continue
		}
		seen[x.Workload.Key] = true
		fmt.Fprintf(w, "### %s (`%s`, %s)\n\n", x.Workload.Name, x.Workload.Path, plural(x.Workload.Conns, "connection"))
		fmt.Fprintln(w, "| procs | design | req/s | vs A | vs A′ | p50 | p99 | CPU s / 10k req | CPU µs per request, by process | peak RSS per process (MiB) | every round's req/s |")
		fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
		rows := []Result{}
		for _, y := range r.Results {
			if y.Workload.Key == x.Workload.Key {
				rows = append(rows, y)
			}
		}
		sort.SliceStable(rows, func(i, j int) bool { return rows[i].Procs < rows[j].Procs })
		for _, y := range rows {
			if y.Err != nil {
				fmt.Fprintf(w, "| %d | %s | failed: %s | | | | | | | | |\n", y.Procs, y.Design, strings.ReplaceAll(y.Err.Error(), "|", "/"))
				continue
			}
			vs := func(design string) string {
				if a := r.find(design, y.Workload.Key, y.Procs); a != nil && a.Load.rate() > 0 {
					return fmt.Sprintf("%.2f×", y.Load.rate()/a.Load.rate())
				}
				return ""
			}
			cpu := fmt.Sprintf("%.2f", y.CPUPer10k())
			if x, ok := y.CPUPer10kOf("init"); ok && (y.Design == "B" || y.Design == "N") {
				cpu += fmt.Sprintf(" (init %.3f)", x)
			}
			var rates []string
			for _, x := range y.Rates {
				rates = append(rates, fmt.Sprintf("%.0f", x))
			}
			fmt.Fprintf(w, "| %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n", y.Procs, y.Design, y.Load.rate(), vs("A"), vs("A′"),
				us(y.Load.P50), us(y.Load.P99), cpu, cpuLine(y), memoryLine(y.Memory, y.Workload.Key == "upload-10mib"), strings.Join(rates, ", "))
		}
		fmt.Fprintln(w)
	}
	if len(r.ColdStarts) > 0 {
		fmt.Fprintln(w, "### Cold start (B): first request of a stopped program to its response")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| app | bare `python3 -c 'import MODULE'` | uvicorn start to first answer (A) | Ferry cold request (B, median) | of which boot | init's timeline (median per phase) | B runs |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | --- | --- |")
		for _, cs := range r.ColdStarts {
			var phases, runs []string
			for i, p := range cs.Phases {
				if i == 0 {
					continue // since boot: the host's uptime in the sandbox
				}
				phases = append(phases, fmt.Sprintf("%s %s", p.Phase, ms(seconds(p.Seconds))))
			}
			for _, x := range cs.Runs {
				runs = append(runs, ms(x.Total))
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", cs.App.Module, ms(cs.BareImport), ms(cs.UvicornStart),
				ms(cs.Median(func(x ColdStartRun) time.Duration { return x.Total })),
				ms(cs.Median(func(x ColdStartRun) time.Duration { return x.Boot })),
				strings.Join(phases, ", "), strings.Join(runs, ", "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "### Targets")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | |")
	fmt.Fprintln(w, "| --- | --- | --- |")
	for _, t := range r.Targets() {
		verdict := "missed"
		switch {
		case t.Missing:
			verdict, t.Measured = "not measured", "-"
		case t.Met:
			verdict = "met"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.Goal, t.Measured, verdict)
	}
}

// byRound is the comparison a target makes, made again within each round:
// the designs of a round run one right after the other, so the machine's
// speed, which drifts from one round to the next by more than the gaps
// measured here, is nearly the same for both. It gives every round's ratio
// of design to reference and in how many rounds the target held; empty
// when the rounds are not known for both.
func byRound(design, versus []float64, compare func(design, versus float64) (ratio float64, held bool)) string {
	if len(design) == 0 || len(design) != len(versus) {
		return ""
	}
	ratios := make([]string, len(design))
	held := 0
	for i := range design {
		x, ok := compare(design[i], versus[i])
		ratios[i] = fmt.Sprintf("%.2f", x)
		if ok {
			held++
		}
	}
	return fmt.Sprintf("; round by round %s, held in %d of %d", strings.Join(ratios, " "), held, len(design))
}

// durations is ds in microseconds.
func durations(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Microsecond)
	}
	return out
}

// plural is "1 connection", "32 connections".
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
