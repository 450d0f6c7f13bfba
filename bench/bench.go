// Package bench measures Ferry against the servers people use today, side
// by side in one run on one machine (see BENCHMARKS.md):
//
//   - A: uvicorn with httptools and uvloop serving the app directly;
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
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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
	WorkDir   string // scratch: the apps, logs, sockets

	Duration    time.Duration // of each load run
	Connections int           // concurrent connections of the throughput runs
	Procs       []int         // Python process counts to compare (1, 2)
	ColdStarts  int           // cold starts timed per app
	Only        string        // run only the workloads whose key contains this (quick checks)

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
	CPUSeconds float64 // all of the design's processes during the run
	Memory     []ProcMemory
	Err        error
}

// CPUPer10k is CPU seconds per 10,000 requests.
func (r Result) CPUPer10k() float64 {
	if r.Load.Requests == 0 {
		return 0
	}
	return r.CPUSeconds / float64(r.Load.Requests) * 10000
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

// Run runs every design under every workload, then the cold starts.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	start := time.Now()
	cfg.AppsDir = filepath.Join(cfg.WorkDir, "apps")
	if err := writeApps(cfg.AppsDir); err != nil {
		return nil, err
	}
	rep := &Report{Machine: DescribeMachine(ctx, cfg.Python), Started: start, Config: cfg}
	for _, d := range Designs() {
		for _, procs := range cfg.Procs {
			for _, app := range []App{plainApp, fastapiApp} {
				var wls []Workload
				for _, w := range Workloads(cfg.Connections) {
					if w.App != app || (w.OneProcOnly && procs != 1) || (w.WS && !d.websockets) || !matches(cfg.Only, w.Key) {
						continue
					}
					wls = append(wls, w)
				}
				if len(wls) == 0 {
					continue
				}
				rep.Results = append(rep.Results, runServer(ctx, &cfg, d, app, procs, wls)...)
				if err := ctx.Err(); err != nil {
					return rep, err
				}
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

// runServer starts design d once and runs the workloads against it.
func runServer(ctx context.Context, cfg *Config, d Design, app App, procs int, wls []Workload) []Result {
	var out []Result
	srv, err := d.start(ctx, cfg, app, procs)
	if err != nil {
		for _, w := range wls {
			out = append(out, Result{Design: d.Key, Workload: w, Procs: procs, Err: err})
			cfg.progress("%s %-14s procs=%d: %v", d.Key, w.Key, procs, err)
		}
		return out
	}
	defer srv.stop()
	for _, w := range wls {
		r := Result{Design: d.Key, Workload: w, Procs: procs}
		u := startUsage(srv.pids...)
		if w.WS {
			r.Load, r.Err = websocketEchoes(ctx, "ws"+srv.base[len("http"):]+w.Path, w.Conns, cfg.Duration)
		} else {
			r.Load, r.Err = runWrk(ctx, cfg.WorkDir, srv.base+w.Path, w.Conns, cfg.Duration, w.Lua)
		}
		r.CPUSeconds, r.Memory = u.finish()
		if r.Err == nil && (r.Load.Errors > 0 || r.Load.Non2xx > 0) {
			r.Err = fmt.Errorf("%d errors, %d non-2xx answers", r.Load.Errors, r.Load.Non2xx)
		}
		out = append(out, r)
		if r.Err != nil {
			cfg.progress("%s %-14s procs=%d: %v", d.Key, w.Key, procs, r.Err)
		} else {
			cfg.progress("%s %-14s procs=%d: %8.0f req/s  p50 %-8v p99 %-8v cpu/10k %.2fs", d.Key, w.Key, procs,
				r.Load.rate(), r.Load.P50, r.Load.P99, r.CPUPer10k())
		}
	}
	return out
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
