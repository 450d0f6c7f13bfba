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
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/dataplane"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/guestapi"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/logsink"
	"github.com/ferry-vm/ferry/host/loopfront"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/host/relay"
	"github.com/ferry-vm/ferry/host/statuspage"
	"github.com/ferry-vm/ferry/host/trigger"
	"github.com/ferry-vm/ferry/internal/termtext"
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
	// ConfigPath is the configuration file File was read from (serve);
	// each value received on Reload (host-agent maps SIGHUP to it) reads
	// it again and applies its programs' changes.
	ConfigPath string
	Reload     <-chan os.Signal
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
	// LogJSON logs slog's JSON, one object a line, instead of its text.
	LogJSON bool
	// LoopFront serves the public listener with the event-loop front
	// (host/loopfront), which hands what it does not serve to net/http.
	LoopFront bool
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
	cluster  *clustered      // serve: the cluster's part; nil for run
	recent   *logsink.Recent // the log's last warnings and errors
	guest    *guestAPI
	notify   notifier // the service manager (systemd), when it listens
	triggers *trigger.Dispatcher
	leader   leaderCache // whether this node leads the cluster, for fires
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
	newSink := logsink.New
	if cfg.LogJSON {
		newSink = logsink.NewJSON
	}
	sink := newSink(stderr, 0)
	defer sink.Close(2 * time.Second)
	a := &agent{cfg: cfg, stdout: stdout, backend: cfg.Backend}
	a.log, a.recent = newLogger(cfg, sink)
	a.notify = notifier{log: a.log}
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
	var loop *loopfront.Front
	var workerChannels dataplane.Adopter
	if cfg.LoopFront {
		if loop, err = loopfront.New(loopfront.Options{Limits: a.conn, Agent: "ferry-host-agent", Log: a.log}); err != nil {
			return err
		}
		workerChannels = loop
	}
	a.manager = lifecycle.New(lifecycle.Options{WorkerChannels: workerChannels, Objects: objects, Backend: a.backend, InitPath: cfg.InitPath, Log: a.log, BootTimeout: cfg.BackendOptions.BootTimeout,
		IdleTimeout: cfg.File.IdleTimeout.Duration, MaxRunning: cfg.File.MaxRunning,
		OnBoot: a.booted, GuestAPI: a.guest.handler, OutputRate: cfg.Limits.LogRate, OnOutputDropped: a.metrics.OutputDropped,
		OnOutput: func(id string, l message.Log) { a.output(sink, id, l) }})
	defer a.manager.Close()
	a.programs = front.NewPrograms(a.manager)
	a.programs.Limits = cfg.Limits.Requests
	defer a.stopAll()
	// Events are served by the router (made below, before the schedules
	// start and the admin API takes events); they end before the VMs.
	var router *front.Router
	a.triggers = trigger.New(trigger.Options{Serve: func(w http.ResponseWriter, r *http.Request, id string) { router.ServeProgram(w, r, id) },
		Fires: a.fires, OnDelivery: a.countDelivery(), Log: a.log})
	a.programs.Changed = a.triggers.Changed
	defer a.closeTriggers()
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

	router = &front.Router{Programs: a.programs, Manager: a.manager, Metrics: a.metrics, MaxBody: cfg.MaxBody, Log: a.log, Root: cfg.File.Root}
	if a.cluster != nil {
		router.Owner = a.cluster.Owner
		router.Forward = front.NewForwarder(a.cluster.node.Name(), a.cluster.Peer, a.cluster.ForwardKey, a.cluster.Live, a.log)
		defer router.Forward.Close()
	}
	a.triggers.Start()

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
	if a.cluster != nil {
		go a.cluster.advertise(ctx, ln.Addr(), a.log)
	}
	status := fmt.Sprintf("serving on http://%s/", ln.Addr())
	if cfg.File.Root != "" {
		if err := a.startRoot(ctx, sink, ln.Addr()); err != nil {
			ln.Close()
			return err
		}
	} else {
		fmt.Fprintf(stdout, "ferry: serving %d programs (%s backend) on http://%s/vm/{program}/\n", len(a.programs.IDs()), a.backend.Name(), ln.Addr())
		status = fmt.Sprintf("serving on http://%s/vm/{program}/", ln.Addr())
	}
	// OPTIONS * goes to the program, as uvicorn gives it to an app (path
	// "*"), not net/http's own answer.
	srv := &http.Server{Handler: router, MaxHeaderBytes: relay.MaxHeaderBytes, DisableGeneralOptionsHandler: true}
	a.conn.Apply(srv)
	// Ready once the listener is open and the program served at / has
	// booted: the connections systemd's dependents make from now on are
	// accepted and served.
	a.notify.ready(status)
	if cfg.Reload != nil {
		go a.reloadLoop(ctx, cfg.File, status)
	}
	if loop != nil {
		serveLoopUntilDone(ctx, loop, router, srv, ln.(*net.TCPListener), a.log, a.notify)
		return nil
	}
	serveUntilDone(ctx, srv, ln, a.log, a.notify)
	return nil
}

// serveLoopUntilDone is serveUntilDone with the event-loop front in front
// of srv: the front takes ln's connections and hands srv those it does
// not serve. At the end both drain, side by side.
func serveLoopUntilDone(ctx context.Context, loop *loopfront.Front, router *front.Router, srv *http.Server, ln *net.TCPListener, log *slog.Logger, notify notifier) {
	served := make(chan error, 1)
	// Not ctx: at its end the front drains (Shutdown, below) rather than
	// stops.
	go func() { served <- loop.Serve(context.Background(), ln, router) }()
	drained := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(drained)
		notify.stopping()
		log.Info("stopping: draining the requests in flight, then stopping the VMs", "drain_timeout", drainTimeout, "stop_timeout", stopTimeout)
		shut, cancel := context.WithTimeout(context.Background(), drainTimeout)
		defer cancel()
		var wg sync.WaitGroup
		handedOver := make(chan struct{})
		wg.Go(func() {
			if err := loop.Shutdown(shut, handedOver); err != nil {
				log.Warn("stopping: requests still in flight after the drain timeout are cut", "err", err)
			}
		})
		if err := srv.Shutdown(shut); err != nil {
			log.Warn("stopping: requests still in flight after the drain timeout are cut", "err", err)
		}
		close(handedOver) // (the loop kept the workers' channels for its requests)
		wg.Wait()
	})
	defer stop()
	if err := srv.Serve(loop.Handoffs()); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		log.Error("serving", "err", err)
	}
	if err := <-served; err != nil {
		log.Error("serving", "err", err)
	}
	if ctx.Err() != nil {
		<-drained
	}
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

// newLogger logs text or JSON to w (the agent's stderr, which never
// blocks it), with debug lines when asked; recent keeps its last warnings
// and errors (the status page's).
func newLogger(cfg *Config, w io.Writer) (log *slog.Logger, recent *logsink.Recent) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if cfg.Debug {
		opts.Level = slog.LevelDebug
	}
	var h slog.Handler = slog.NewTextHandler(w, opts) // quotes what a terminal would act on
	if cfg.LogJSON {
		// encoding/json leaves DEL, the C1 controls and the bidi controls
		// of program output and errors raw: written as \u escapes, the
		// same values print harmlessly.
		h = slog.NewJSONHandler(termtext.JSONWriter(w), opts)
	}
	recent = logsink.NewRecent(h, slog.LevelWarn, 0)
	return slog.New(recent), recent
}

// output takes a line of a program's output: kept for the admin API's
// logs, and printed (run; a record of the JSON log with --log-format
// json) or logged at debug level.
func (a *agent) output(stderr io.Writer, id string, l message.Log) {
	a.programs.Output(id, l)
	level := slog.LevelDebug
	if a.cfg.EchoOutput {
		if !a.cfg.LogJSON {
			stderr.Write(echoLine(id, l))
			return
		}
		level = slog.LevelInfo
	}
	a.log.Log(context.Background(), level, "program output", "program", id, "source", string(l.Source), "origin", l.Origin, "line", string(l.Line))
}

// echoLine is how run prints a line of a program's output on the agent's
// stderr, "[program source origin] line", what a terminal would act on
// escaped (termtext), as program logs prints it.
func echoLine(id string, l message.Log) []byte {
	out := fmt.Appendf(nil, "[%s ", id)
	out = termtext.AppendVisible(out, l.Source)
	out = fmt.Appendf(out, " %d] ", l.Origin)
	return append(termtext.AppendVisible(out, l.Line), '\n')
}

// booted takes a boot attempt's outcome: counted in the metrics, and a
// line of source "ferry" in the program's output, so that a reader of its
// logs (`program logs -f`) sees where one VM's lines end and the next's
// begin.
func (a *agent) booted(id string, took time.Duration, timeline []message.TimelineEntry, err error) {
	a.metrics.Boot(id, took, timeline, err)
	line := fmt.Sprintf("VM started: cold start %s (%s)", took.Round(time.Millisecond), message.FormatTimeline(timeline))
	if err != nil {
		line = fmt.Sprintf("VM failed to start after %s: %v", took.Round(time.Millisecond), err)
	}
	a.programs.Output(id, message.Log{Source: []byte("ferry"), UnixNano: uint64(time.Now().UnixNano()), Line: []byte(line)})
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
			// The app's own account (a traceback), line by line, with
			// what a terminal would act on escaped.
			for line := range strings.SplitSeq(strings.TrimRight(berr.Detail, "\n"), "\n") {
				fmt.Fprintf(stderr, "%s\n", termtext.Visible(line))
			}
		}
		return fmt.Errorf("the program did not start: %w", err)
	}
	timeline := inst.Timeline
	inst.Release() // booted; each request counts itself
	fmt.Fprintf(a.stdout, "ferry: serving %s (%s, %s backend) on http://%s/\n", p.Entrypoint, p.Interface, a.backend.Name(), addr)
	fmt.Fprintf(a.stdout, "ferry: cold start %s: %s\n", time.Since(start).Round(time.Millisecond), termtext.Visible(message.FormatTimeline(timeline))) // phases named by the guest
	return nil
}

// startAdmin serves the admin API (and the metrics) with the same
// connection limits as the public listener; stop closes it.
func (a *agent) startAdmin() (stop func(), err error) {
	l, err := admin.Listen(a.cfg.Admin, a.cfg.AdminToken)
	if err != nil {
		return nil, err
	}
	api := &admin.Server{Programs: a.programs, Manager: a.manager, Token: a.cfg.AdminToken, Log: a.log, Metrics: a.metrics.Handler(),
		Observed: a.observed, Events: a.triggers}
	if a.cluster != nil {
		api.Deployer, api.Cluster = a.cluster.catalog, a.cluster
	}
	srv := &http.Server{Handler: api.Handler()}
	a.conn.Apply(srv)
	go srv.Serve(l)
	a.log.Info("admin API listening", "addr", a.cfg.Admin)
	return func() { srv.Close() }, nil
}

// observed is what the status page shows of the agent beyond the admin
// API's own view: the backend, recent requests, the log's last warnings
// and errors, the cold-start histograms.
func (a *agent) observed() statuspage.View {
	v := statuspage.View{Backend: a.backend.Name(), Requests: a.metrics.Recent(), Errors: a.recent.Records()}
	var err error
	if v.ColdStarts, err = a.metrics.ColdStarts(); err != nil {
		a.log.Warn("status page: cold starts", "err", err)
	}
	return v
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
// service manager hears STOPPING=1, the listener closes, idle connections
// with it, and the requests in flight are given drainTimeout to finish
// against their running VMs; only then does it return and the caller stop
// the VMs (a VM's program gets init's grace period). Websockets, which
// net/http no longer tracks once upgraded, end with their VM.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, log *slog.Logger, notify notifier) {
	drained := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(drained)
		notify.stopping()
		log.Info("stopping: draining the requests in flight, then stopping the VMs", "drain_timeout", drainTimeout, "stop_timeout", stopTimeout)
		shut, cancel := context.WithTimeout(context.Background(), drainTimeout)
		defer cancel()
		if err := srv.Shutdown(shut); err != nil {
			log.Warn("stopping: requests still in flight after the drain timeout are cut", "err", err)
		}
	})
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serving", "err", err)
	}
	// Serve returns as soon as Shutdown starts: wait for the drain.
	if ctx.Err() != nil {
		<-drained
	}
}

// stopAll stops every program's VM (and the boots in progress).
func (a *agent) stopAll() {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	a.manager.StopAll(ctx)
}
