// Package daemon runs the host agent that `host-agent run` and
// `host-agent serve` start. From a Config it makes the VM backend, the
// lifecycle manager, the metrics, the deployed programs and the HTTP
// front (with the admin API for serve), opens their listeners, serves
// until its context ends, then lets the requests in flight finish and
// stops every VM. run and serve differ only in their Config: run's is a
// one-program manifest (manifest.OneProgram) routed at / by the same
// router that routes serve's programs at /vm/{id}.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sort"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/guestapi"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/logsink"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/host/relay"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
)

// How long the agent waits, once told to stop, for the requests in flight
// and then for the VMs.
const (
	drainTimeout = 10 * time.Second
	stopTimeout  = 15 * time.Second
)

// Config is everything an agent starts from: its programs (a
// configuration file, or run's one-program manifest) and the settings of
// its command line.
type Config struct {
	// File lists the programs, the idle timeout and the cap on running
	// VMs; File.Root names the program served at / (host-agent run).
	File *manifest.File
	// Listen is the public HTTP address.
	Listen string
	// BackendOptions choose the VM backend, unless Backend is set (tests).
	BackendOptions BackendOptions
	Backend        backend.Backend
	// InitPath is the init binary the backend starts.
	InitPath string
	// MaxBody bounds request bodies in bytes (413 beyond; 0: no bound).
	MaxBody int64
	// Limits are the listeners' timeouts, the programs' requests in
	// flight and the rate of program output kept.
	Limits Limits
	// MetricsListen, when set, serves /metrics, /healthz and Go's
	// profiles on a listener of their own.
	MetricsListen string
	// GuestAPI bounds each program's calls to the guest API and its
	// store (zero fields: guestapi's defaults).
	GuestAPI guestapi.Limits
	// Admin is the admin API's address (a unix socket path or host:port;
	// none when empty) and AdminToken its bearer token.
	Admin, AdminToken string
	// Debug logs at debug level (init's console included).
	Debug bool
	// EchoOutput prints the programs' output on Stderr as "[program
	// source origin] line" (run); otherwise it goes to the debug log.
	EchoOutput bool
	// Stdout receives the lines saying where the agent serves (tests wait
	// for "ferry: serving"), Stderr the log; nil: the process's own.
	Stdout, Stderr io.Writer
	// Store is where programs' objects named by ref come from.
	Store StoreOptions
	// Cluster, when set (serve), keeps the agent's state in a dqlite
	// cluster: programs deployed through the API survive restarts and are
	// served by every node, persistent programs run exactly once across
	// the nodes. run has none: its one program lives and dies with it.
	Cluster *ClusterOptions
}

// Limits are an agent's resolved limits.
type Limits struct {
	// Conn are the timeouts of every listener (public, admin, metrics).
	Conn front.ConnLimits
	// Requests bound each program's requests in flight, unless its
	// manifest sets its own.
	Requests front.RequestLimits
	// LogRate is the lines of a program's output per second kept
	// (lifecycle.Options.OutputRate).
	LogRate float64
}

// ConfigError is a command line or configuration the agent does not start
// with (the command's exit status is 2).
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }

// Unwrap returns the error at fault.
func (e *ConfigError) Unwrap() error { return e.Err }

// agent is a running agent's parts.
type agent struct {
	cfg      *Config
	log      *slog.Logger
	stdout   io.Writer
	backend  backend.Backend
	manager  *lifecycle.Manager
	metrics  *metrics.Metrics
	programs *front.Programs
	conn     front.ConnLimits
	cluster  *clustered // serve: the cluster's part; nil for run
	guest    *guestAPI
}

// Serve runs the agent cfg describes until ctx ends (or it cannot start:
// a *ConfigError for a configuration it refuses), then lets the requests
// in flight finish and stops every VM.
func Serve(ctx context.Context, cfg *Config) error {
	stdout, stderr := cfg.Stdout, cfg.Stderr
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	sink := logsink.New(stderr, 0)
	defer sink.Close(2 * time.Second)
	a := &agent{cfg: cfg, log: newLogger(cfg.Debug, sink), stdout: stdout, backend: cfg.Backend}
	var node *cluster.Node
	if cfg.Cluster != nil {
		var err error
		if node, err = openCluster(ctx, *cfg.Cluster, a); err != nil {
			return err
		}
		defer func() {
			leave, cancel := context.WithTimeout(context.Background(), stopTimeout)
			defer cancel()
			node.Close(leave)
		}()
		cfg.BackendOptions.NodeSlot = node.Slot()
	}
	if a.backend == nil {
		net := hostnet.New(cfg.BackendOptions.netOptions(a.log))
		var err error
		if a.backend, err = newBackend(cfg.BackendOptions, net, a.log); err != nil {
			return &ConfigError{err}
		}
		if usesNetwork(cfg) && os.Geteuid() == 0 {
			if err := net.Open(); err != nil {
				return err
			}
		}
		defer func() {
			if err := net.Close(); err != nil {
				a.log.Warn("network: closing", "err", err)
			}
		}()
	}
	a.guest = newGuestAPI(node, cfg.GuestAPI, a)
	a.conn = cfg.Limits.Conn
	a.conn.Log = a.log
	a.metrics = metrics.New(func() int { return len(a.manager.Running()) })
	objects, err := openStore(cfg.Store, cfg.BackendOptions.StateDir, a.log, a.metrics)
	if err != nil {
		return err
	}
	a.manager = lifecycle.New(lifecycle.Options{Objects: objects, Backend: a.backend, InitPath: cfg.InitPath, Log: a.log, BootTimeout: cfg.BackendOptions.BootTimeout,
		IdleTimeout: cfg.File.IdleTimeout.Duration, MaxRunning: cfg.File.MaxRunning,
		OnBoot: a.metrics.Boot, GuestAPI: a.guest.handler, OutputRate: cfg.Limits.LogRate, OnOutputDropped: a.metrics.OutputDropped,
		OnOutput: func(id string, l message.Log) { a.output(sink, id, l) }})
	defer a.manager.Close()
	a.programs = front.NewPrograms(a.manager)
	a.programs.Limits = cfg.Limits.Requests
	defer a.stopAll()
	if node != nil {
		a.programs.ClusterPersists = true
		clusterCtx, stopCluster := context.WithCancel(ctx)
		c, supervised, err := a.startCluster(clusterCtx, node)
		if err != nil {
			stopCluster()
			return err
		}
		a.cluster = c
		defer func() { stopCluster(); <-supervised }()
	} else if err := a.deploy(); err != nil {
		return &ConfigError{err}
	}

	if cfg.Admin != "" {
		stop, err := a.startAdmin()
		if err != nil {
			return fmt.Errorf("admin API: %w", err)
		}
		defer stop()
	}
	if cfg.MetricsListen != "" {
		stop, err := a.startMetrics()
		if err != nil {
			return err
		}
		defer stop()
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("cannot listen: %w", err)
	}
	if cfg.File.Root != "" {
		if err := a.startRoot(ctx, sink, ln.Addr()); err != nil {
			ln.Close()
			return err
		}
	} else {
		fmt.Fprintf(stdout, "ferry: serving %d programs (%s backend) on http://%s/vm/{program}/\n", len(a.programs.IDs()), a.backend.Name(), ln.Addr())
	}
	router := &front.Router{Programs: a.programs, Manager: a.manager, Metrics: a.metrics, MaxBody: cfg.MaxBody, Log: a.log, Root: cfg.File.Root}
	if a.cluster != nil {
		router.Owner = a.cluster.Owner
	}
	// OPTIONS * goes to the program, as uvicorn gives it to an app (path
	// "*"), not net/http's own answer.
	srv := &http.Server{Handler: router, MaxHeaderBytes: relay.MaxHeaderBytes, DisableGeneralOptionsHandler: true}
	a.conn.Apply(srv)
	serveUntilDone(ctx, srv, ln, a.log)
	return nil
}

// usesNetwork reports whether the agent prepares the node's network at
// its start (otherwise the first VM with an interface does): when a
// network flag is given or a program of its configuration asks for an
// interface.
func usesNetwork(cfg *Config) bool {
	o := cfg.BackendOptions
	if o.IPv6Prefix.IsValid() || o.Uplink != "" || o.DNS != nil {
		return true
	}
	for _, p := range cfg.File.Programs {
		if p.Environment.Interface() {
			return true
		}
	}
	return false
}

// newLogger logs text to w (the agent's stderr, which never blocks it),
// with debug lines when asked.
func newLogger(debug bool, w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// output takes a line of a program's output: kept for the admin API's
// logs, and printed (run) or logged at debug level.
func (a *agent) output(stderr io.Writer, id string, l message.Log) {
	a.programs.Output(id, l)
	if a.cfg.EchoOutput {
		fmt.Fprintf(stderr, "[%s %s %d] %s\n", id, l.Source, l.Origin, l.Line)
		return
	}
	a.log.Debug("program output", "program", id, "source", string(l.Source), "origin", l.Origin, "line", string(l.Line))
}

// deploy adds the configuration's programs, in the order of their ids;
// persistent ones start now.
func (a *agent) deploy() error {
	ids := make([]string, 0, len(a.cfg.File.Programs))
	for id := range a.cfg.File.Programs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := a.programs.Deploy(id, a.cfg.File.Programs[id]); err != nil {
			return err
		}
	}
	return nil
}

// startRoot boots the program served at / before the agent serves, and
// says where it serves and how the boot went (host-agent run).
func (a *agent) startRoot(ctx context.Context, stderr io.Writer, addr net.Addr) error {
	route := a.programs.Route(a.cfg.File.Root)
	if route == nil {
		return &ConfigError{fmt.Errorf("the program to serve at /, %q, is not deployed", a.cfg.File.Root)}
	}
	p := route.Program
	start := time.Now()
	inst, err := a.manager.Acquire(ctx, p)
	if err != nil {
		if berr, ok := errors.AsType[*contract.ConfigError](err); ok && berr.Detail != "" {
			fmt.Fprintf(stderr, "%s\n", berr.Detail)
		}
		return fmt.Errorf("the program did not start: %w", err)
	}
	timeline := inst.Timeline
	inst.Release() // booted; each request counts itself
	fmt.Fprintf(a.stdout, "ferry: serving %s (%s, %s backend) on http://%s/\n", p.Entrypoint, p.Interface, a.backend.Name(), addr)
	fmt.Fprintf(a.stdout, "ferry: cold start %s: %s\n", time.Since(start).Round(time.Millisecond), message.FormatTimeline(timeline))
	return nil
}

// startAdmin serves the admin API (and the metrics) with the same
// connection limits as the public listener; stop closes it.
func (a *agent) startAdmin() (stop func(), err error) {
	l, err := admin.Listen(a.cfg.Admin, a.cfg.AdminToken)
	if err != nil {
		return nil, err
	}
	api := &admin.Server{Programs: a.programs, Manager: a.manager, Token: a.cfg.AdminToken, Log: a.log, Metrics: a.metrics.Handler()}
	if a.cluster != nil {
		api.Deployer, api.Cluster = a.cluster.catalog, a.cluster
	}
	srv := &http.Server{Handler: api.Handler()}
	a.conn.Apply(srv)
	go srv.Serve(l)
	a.log.Info("admin API listening", "addr", a.cfg.Admin)
	return func() { srv.Close() }, nil
}

// startMetrics serves the metrics, /healthz and Go's profiles on their own
// listener, the operator's (the benchmarks use the profiles); stop closes
// it.
func (a *agent) startMetrics() (stop func(), err error) {
	ln, err := net.Listen("tcp", a.cfg.MetricsListen)
	if err != nil {
		return nil, fmt.Errorf("cannot listen for metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", a.metrics.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux}
	a.conn.Apply(srv)
	go srv.Serve(ln)
	fmt.Fprintf(a.stdout, "ferry: metrics on http://%s/metrics\n", ln.Addr())
	return func() { srv.Close() }, nil
}

// serveUntilDone serves HTTP until ctx ends (SIGINT, SIGTERM). Then the
// listener closes, idle connections with it, and the requests in flight
// are given drainTimeout while the caller stops the VMs (a VM's program
// gets init's grace period to finish what it serves).
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, log *slog.Logger) {
	stop := context.AfterFunc(ctx, func() {
		shut, cancel := context.WithTimeout(context.Background(), drainTimeout)
		defer cancel()
		srv.Shutdown(shut)
	})
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serving", "err", err)
	}
}

// stopAll stops every program's VM (and the boots in progress).
func (a *agent) stopAll() {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	a.manager.StopAll(ctx)
}
