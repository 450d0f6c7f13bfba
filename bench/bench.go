// Package bench measures Ferry against the servers people use today, side
// by side in one run on one machine (see BENCHMARKS.md):
//
//   - A: uvicorn with httptools and uvloop serving the app directly;
//   - A′: nginx in front of A's uvicorn, over a unix socket with keep-alive
//     (the shape of the platforms that proxy to an HTTP server in a VM);
//   - B: Ferry: host-agent (sandbox backend) -> init -> its ASGI worker pool;
//   - C: the per-request msgpack design Ferry replaces (MsgpackFront and
//     apps/../msgpack_guest.py).
//
// Each design serves the same app code (bench/apps) with the same number of
// Python processes and is driven by wrk (websockets: a Go client). For
// every run it reports requests/s, p50 and p99 latency, the CPU seconds all
// of the design's processes used per 10,000 requests and the peak resident
// memory of each of them. Cold starts of Ferry are timed separately,
// broken down by init's boot timeline, next to a bare Python import.
package bench

import (
	"cmp"
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

//go:embed apps/*.py msgpack_guest.py
var files embed.FS

// Config says what to run and where the binaries are.
type Config struct {
	Python    string // the interpreter with Debian's packages: /usr/bin/python3
	HostAgent string // bin/host-agent
	Init      string // bin/init
	Self      string // this program's binary, for C's front (msgpack-front)
	Nginx     string // A′'s nginx: /usr/sbin/nginx (Debian's nginx-light)
	WorkDir   string // scratch: the apps, logs, sockets

	Duration    time.Duration // of each load run
	Connections int           // concurrent connections of the throughput runs
	Procs       []int         // Python process counts to compare (1, 2)
	Rounds      int           // interleaved rounds per workload; the median is reported
	ColdStarts  int           // cold starts timed per app
	Only        string        // run only the workloads whose key contains this (quick checks)
	// FrontProcs is GOMAXPROCS for the Go front ends (B's host-agent, C's
	// msgpack-front): 1, like A′'s one nginx worker; 0 leaves Go's default
	// (one per CPU).
	FrontProcs int
	// Prototype adds design E, bench/epollfront's event-loop front, a
	// measurement of what a front without Go's network poller costs.
	Prototype bool

	Progress io.Writer // a line per run as it finishes
	AppsDir  string    // set by Run: where the apps were written
}

// Workload is one kind of traffic.
type Workload struct {
	Key   string
	Name  string
	App   App
	Path  string
	Conns int    // connections; 0: Config.Connections
	Lua   string // wrk request shaping
	WS    bool   // websocket echoes instead of wrk
	// OneProcOnly: run only with one Python process (latency runs).
	OneProcOnly bool
}

// Workloads returns the workloads in the order they run on one server.
// The upload runs first after the hello runs, so that its "before" memory
// is the server's steady state and its peak shows what the body costs.
func Workloads(conns int) []Workload {
	return []Workload{
		{Key: "hello", Name: "plain ASGI hello world", App: plainApp, Path: "/", Conns: conns},
		{Key: "hello-1conn", Name: "plain ASGI hello world, 1 connection", App: plainApp, Path: "/", Conns: 1, OneProcOnly: true},
		{Key: "upload-10mib", Name: "10 MiB upload", App: plainApp, Path: "/upload", Conns: 4, Lua: uploadScript(10 << 20)},
		{Key: "response-1mib", Name: "1 MiB response", App: plainApp, Path: "/big", Conns: 8},
		{Key: "websocket-100", Name: "100 concurrent websocket echoes", App: plainApp, Path: "/ws", Conns: 100, WS: true},
		{Key: "fastapi", Name: "FastAPI JSON route", App: fastapiApp, Path: "/items/42?q=bench", Conns: conns},
		{Key: "fastapi-1conn", Name: "FastAPI JSON route, 1 connection", App: fastapiApp, Path: "/items/42?q=bench", Conns: 1, OneProcOnly: true},
	}
}

// Result is one design under one workload.
type Result struct {
	Design     string
	Workload   Workload
	Procs      int
	Load       loadResult
	Rates      []float64       // req/s of every round, in order (Load is the median round's)
	P50s       []time.Duration // p50 of every round, in order
	CPUSeconds float64         // all of the design's processes during the run
	// CPUByName is CPUSeconds split by process name (comm): "init" is B's
	// init, "nginx" A′'s master and worker.
	CPUByName map[string]float64
	Memory    []ProcMemory
	Err       error
}

// CPUPer10k is CPU seconds per 10,000 requests.
func (r Result) CPUPer10k() float64 { return r.per10k(r.CPUSeconds) }

// CPUPer10kOf is the CPU seconds of the processes named name (comm) per
// 10,000 requests, and whether there was such a process.
func (r Result) CPUPer10kOf(name string) (float64, bool) {
	s, ok := r.CPUByName[name]
	return r.per10k(s), ok
}

func (r Result) per10k(seconds float64) float64 {
	if r.Load.Requests == 0 {
		return 0
	}
	return seconds / float64(r.Load.Requests) * 10000
}

// Report is everything one run measured.
type Report struct {
	Machine    Machine
	Started    time.Time
	Took       time.Duration
	Config     Config
	Results    []Result
	ColdStarts []ColdStart
}

// Run runs every design under every workload, then the cold starts. The
// designs are interleaved: for each workload, a round runs every design
// one after the other (in a rotating order), and the rounds are repeated, so
// that the machine's drift and noise fall on all designs alike; each
// design's result is its median round.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	start := time.Now()
	cfg.AppsDir = filepath.Join(cfg.WorkDir, "apps")
	if err := writeApps(cfg.AppsDir); err != nil {
		return nil, err
	}
	cfg.Rounds = max(cfg.Rounds, 1)
	rep := &Report{Machine: DescribeMachine(ctx, cfg.Python, cfg.Nginx), Started: start, Config: cfg}
	for _, procs := range cfg.Procs {
		for _, app := range []App{plainApp, fastapiApp} {
			var wls []Workload
			for _, w := range Workloads(cfg.Connections) {
				if w.App == app && (!w.OneProcOnly || procs == 1) && matches(cfg.Only, w.Key) {
					wls = append(wls, w)
				}
			}
			if len(wls) == 0 {
				continue
			}
			rep.Results = append(rep.Results, runGroup(ctx, &cfg, app, procs, wls)...)
			if err := ctx.Err(); err != nil {
				return rep, err
			}
		}
	}
	if cfg.ColdStarts > 0 && matches(cfg.Only, "cold") {
		cs, err := measureColdStarts(ctx, &cfg)
		if err != nil {
			return rep, fmt.Errorf("cold starts: %w", err)
		}
		rep.ColdStarts = cs
	}
	rep.Took = time.Since(start)
	return rep, nil
}

func matches(only, key string) bool {
	return only == "" || containsWord(only, key)
}

// runGroup starts every design on app with procs Python processes (idle
// servers cost nothing), runs the workloads in interleaved rounds and
// returns each design's median round per workload.
func runGroup(ctx context.Context, cfg *Config, app App, procs int, wls []Workload) []Result {
	designs := Designs(cfg.Prototype)
	servers := make([]*server, len(designs))
	startErr := make([]error, len(designs))
	for i, d := range designs {
		servers[i], startErr[i] = d.start(ctx, cfg, app, procs)
		if startErr[i] == nil {
			defer servers[i].stop()
		} else {
			cfg.progress("%s %s procs=%d: %v", d.Key, app.Module, procs, startErr[i])
		}
	}
	var out []Result
	for _, w := range wls {
		rounds := make([][]Result, len(designs))
		for round := 0; round < cfg.Rounds && ctx.Err() == nil; round++ {
			for k := range designs {
				i := (k + round) % len(designs) // rotate who goes first
				d := designs[i]
				if w.WS && !d.websockets {
					continue
				}
				if startErr[i] != nil {
					rounds[i] = append(rounds[i], Result{Design: d.Key, Workload: w, Procs: procs, Err: startErr[i]})
					continue
				}
				r := measure(ctx, cfg, servers[i], d, w, procs)
				rounds[i] = append(rounds[i], r)
				if r.Err != nil {
					cfg.progress("%-2s %-14s procs=%d round %d: %v", d.Key, w.Key, procs, round+1, r.Err)
				} else {
					cfg.progress("%-2s %-14s procs=%d round %d: %8.0f req/s  p50 %-8v p99 %-8v cpu/10k %.2fs", d.Key, w.Key, procs, round+1,
						r.Load.rate(), r.Load.P50, r.Load.P99, r.CPUPer10k())
				}
			}
		}
		for _, rs := range rounds {
			if len(rs) > 0 {
				out = append(out, medianRound(rs))
			}
		}
	}
	return out
}

// measure runs workload w once against srv.
func measure(ctx context.Context, cfg *Config, srv *server, d Design, w Workload, procs int) Result {
	r := Result{Design: d.Key, Workload: w, Procs: procs}
	u := startUsage(srv.pids...)
	if w.WS {
		r.Load, r.Err = websocketEchoes(ctx, "ws"+srv.base[len("http"):]+w.Path, w.Conns, cfg.Duration)
	} else {
		r.Load, r.Err = runWrk(ctx, cfg.WorkDir, srv.base+w.Path, w.Conns, cfg.Duration, w.Lua)
	}
	r.CPUSeconds, r.CPUByName, r.Memory = u.finish()
	if r.Err == nil && (r.Load.Errors > 0 || r.Load.Non2xx > 0) {
		r.Err = fmt.Errorf("%d errors, %d non-2xx answers", r.Load.Errors, r.Load.Non2xx)
	}
	return r
}

// medianRound returns the round with the median rate, its memory widened
// to all rounds (the start of the first, the peak of any), and every
// round's rate. A failed round fails the result.
func medianRound(rounds []Result) Result {
	for _, r := range rounds {
		if r.Err != nil {
			return r
		}
	}
	byRate := slices.Clone(rounds)
	slices.SortFunc(byRate, func(a, b Result) int { return cmp.Compare(a.Load.rate(), b.Load.rate()) })
	med := byRate[len(byRate)/2]
	for _, r := range rounds {
		med.Rates = append(med.Rates, r.Load.rate())
		med.P50s = append(med.P50s, r.Load.P50)
	}
	peaks := map[int]ProcMemory{}
	for _, r := range rounds {
		for _, m := range r.Memory {
			p, seen := peaks[m.PID]
			if !seen {
				p = m
			}
			p.PeakKiB, p.PeakAnonKiB = max(p.PeakKiB, m.PeakKiB), max(p.PeakAnonKiB, m.PeakAnonKiB)
			peaks[m.PID] = p
		}
	}
	med.Memory = nil
	for _, p := range peaks {
		med.Memory = append(med.Memory, p)
	}
	slices.SortFunc(med.Memory, func(a, b ProcMemory) int { return a.PID - b.PID })
	return med
}

func (cfg *Config) progress(format string, args ...any) {
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, format+"\n", args...)
	}
}

// writeApps writes the embedded Python files to dir.
func writeApps(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return fs.WalkDir(files, ".", func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, filepath.Base(path)), b, 0o644)
	})
}
