// Command ferry-bench runs the benchmark of BENCHMARKS.md: uvicorn (A),
// nginx in front of uvicorn (A′), Ferry (B) and the per-request msgpack
// design (C) side by side on the same app code, and writes the tables as
// Markdown.
//
//	ferry-bench [-out FILE] [-duration 4s] [-rounds 3] [-connections 32] [-procs 1,2] [-only hello,cold]
//	ferry-bench msgpack-front --listen ADDR --socket PATH   (design C's host side)
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "msgpack-front" {
		err = msgpackFront(ctx, os.Args[2:])
	} else {
		err = run(ctx, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ferry-bench", flag.ContinueOnError)
	out := fs.String("out", "", "write the Markdown report to this file too")
	duration := fs.Duration("duration", 4*time.Second, "length of each load run")
	rounds := fs.Int("rounds", 3, "interleaved rounds per workload (the median round is reported)")
	conns := fs.Int("connections", 32, "connections of the throughput runs")
	procs := fs.String("procs", "1,2", "Python process counts to compare")
	coldStarts := fs.Int("cold-starts", 5, "cold starts timed per app (0: none)")
	only := fs.String("only", "", "comma-separated workload keys (substrings) to run, e.g. hello,cold")
	python := fs.String("python", "/usr/bin/python3", "Python with Debian's uvicorn, FastAPI, uvloop, httptools and msgpack")
	frontProcs := fs.Int("front-procs", 1, "GOMAXPROCS of the Go front ends (B's host-agent, C's front), like A′'s one nginx worker; 0: Go's default")
	nginx := fs.String("nginx", "/usr/sbin/nginx", "nginx of design A′ (Debian's nginx-light)")
	bin := fs.String("bin", "bin", "directory with host-agent and init")
	workDir := fs.String("work", "", "scratch directory (default: a new temporary one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := bench.Config{Python: *python, Nginx: *nginx, Self: self, Duration: *duration, Rounds: *rounds, Connections: *conns,
		ColdStarts: *coldStarts, Only: *only, FrontProcs: *frontProcs, Progress: os.Stderr, WorkDir: *workDir}
	for _, p := range strings.Split(*procs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 {
			return fmt.Errorf("-procs: bad count %q", p)
		}
		cfg.Procs = append(cfg.Procs, n)
	}
	if cfg.HostAgent, err = filepath.Abs(filepath.Join(*bin, "host-agent")); err != nil {
		return err
	}
	cfg.Init = filepath.Join(filepath.Dir(cfg.HostAgent), "init")
	if cfg.WorkDir == "" {
		if cfg.WorkDir, err = os.MkdirTemp("", "ferry-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(cfg.WorkDir)
	}
	rep, err := bench.Run(ctx, cfg)
	if rep != nil {
		rep.Markdown(os.Stdout)
		if *out != "" {
			f, ferr := os.Create(*out)
			if ferr != nil {
				return ferr
			}
			rep.Markdown(f)
			if ferr := f.Close(); ferr != nil {
				return ferr
			}
		}
	}
	return err
}

func msgpackFront(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("msgpack-front", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8090", "address to serve HTTP on")
	socket := fs.String("socket", "", "the guest's unix socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv := &http.Server{Addr: *listen, Handler: &bench.MsgpackFront{Socket: *socket, Log: slog.Default()}}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}
