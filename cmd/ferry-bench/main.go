// Command ferry-bench runs the benchmark of BENCHMARKS.md: uvicorn (A),
// nginx in front of uvicorn (A′), Ferry (B) and the per-request msgpack
// design (C) side by side on the same app code, and writes the tables as
// Markdown.
//
//	ferry-bench [-out FILE] [-duration 4s] [-rounds 3] [-connections 32] [-procs 1,2] [-only hello,cold]
//	ferry-bench msgpack-front --listen ADDR --socket PATH   (design C's host side)
//	ferry-bench epoll-front --listen ADDR --workers N --app MOD:APP   (design E, -prototype)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/bench"
	"github.com/ferry-vm/ferry/bench/epollfront"
	"github.com/ferry-vm/ferry/guest/app/asgi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "msgpack-front" {
		err = msgpackFront(ctx, os.Args[2:])
	} else if len(os.Args) > 1 && os.Args[1] == "epoll-front" {
		err = epollFront(ctx, os.Args[2:])
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
	rounds := fs.Int("rounds", 5, "interleaved rounds per workload (the median round is reported)")
	conns := fs.Int("connections", 32, "connections of the throughput runs")
	procs := fs.String("procs", "1,2", "Python process counts to compare")
	coldStarts := fs.Int("cold-starts", 5, "cold starts timed per app (0: none)")
	only := fs.String("only", "", "comma-separated workload keys (substrings) to run, e.g. hello,cold")
	python := fs.String("python", "/usr/bin/python3", "Python with Debian's uvicorn, FastAPI, uvloop, httptools and msgpack")
	frontProcs := fs.Int("front-procs", 1, "GOMAXPROCS of the Go front ends (B's host-agent, C's front), like A′'s one nginx worker; 0: Go's default")
	nginx := fs.String("nginx", "/usr/sbin/nginx", "nginx of design A′ (Debian's nginx-light)")
	bin := fs.String("bin", "bin", "directory with host-agent and init")
	workDir := fs.String("work", "", "scratch directory (default: a new temporary one)")
	prototype := fs.Bool("prototype", false, "also run design E, the event-loop front prototype of bench/epollfront (a measurement, not Ferry)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := bench.Config{Python: *python, Nginx: *nginx, Self: self, Duration: *duration, Rounds: *rounds, Connections: *conns,
		ColdStarts: *coldStarts, Only: *only, FrontProcs: *frontProcs, Prototype: *prototype, Progress: os.Stderr, WorkDir: *workDir}
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

// epollFront runs design E: bench/epollfront's event loop in front of
// its own ASGI workers.
func epollFront(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("epoll-front", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8090", "IPv4 address and port to serve HTTP on")
	workers := fs.Int("workers", 1, "ASGI worker processes")
	python := fs.String("python", "/usr/bin/python3", "the workers' interpreter")
	app := fs.String("app", "", "the ASGI app, module:attribute, in the working directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	if *app == "" {
		return errors.New("-app is required")
	}
	dir, err := os.Getwd()
	if err != nil {
		return err
	}
	scripts, err := os.MkdirTemp("", "ferry-epoll-front-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scripts)
	script, err := asgi.WriteWorkerScript(scripts)
	if err != nil {
		return err
	}
	err = epollfront.Run(ctx, epollfront.Options{Listen: addr, Workers: *workers, Python: *python, Script: script,
		CodeDir: dir, App: *app, Output: os.Stderr, Log: slog.Default()})
	if ctx.Err() != nil {
		return nil // stopped
	}
	return err
}
