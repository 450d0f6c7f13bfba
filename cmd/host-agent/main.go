// Command host-agent runs on a compute node: it accepts HTTP, starts the VM
// of the addressed program and relays each request to it over the Ferry
// protocol.
//
//	host-agent run [flags] CODE_DIR ENTRYPOINT   serve one program at /
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/qemu"
	"github.com/ferry-vm/ferry/host/backend/sandbox"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/logsink"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/host/metrics"
	"github.com/ferry-vm/ferry/host/relay"
	"github.com/ferry-vm/ferry/protocol/message"
)

const usage = `usage:
  host-agent run [flags] CODE_DIR ENTRYPOINT   serve one program at / (like uvicorn main:app)
  host-agent serve --config FILE [flags]       serve the programs of a configuration file
  host-agent program COMMAND ...               manage a serving agent (list, status, deploy, stop, restart, logs, delete)
  host-agent -version
`

func main() {
	sandbox.RunStageIfRequested() // the sandbox's first stage is this binary, re-executed
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "-version", "--version", "version":
		fmt.Printf("ferry host-agent (protocol version %d)\n", message.ProtocolVersion)
	case "run":
		os.Exit(run(os.Args[2:]))
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "program":
		os.Exit(program(os.Args[2:]))
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}

func run(args []string) int {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve HTTP on")
	iface := fs.String("interface", "asgi", "asgi or executable")
	workers := fs.Int("workers", 0, "ASGI worker processes (0: one per CPU)")
	bf := addBackendFlags(fs)
	python := fs.String("python", "", "Python interpreter inside the VM (default /usr/bin/python3)")
	vcpus := fs.Int("vcpus", 0, "the VM's vCPUs (qemu: default 1; sandbox: a CPU quota, none by default)")
	memory := fs.Int("memory", 0, "the VM's memory in MiB (default 512; the sandbox's cgroup limit)")
	initPath := fs.String("init", "", "init binary (default: init next to host-agent)")
	maxBody := fs.Int64("max-body", 100<<20, "largest request body in bytes (413 beyond)")
	timeout := fs.Duration("timeout", 0, "per-request time limit (504 beyond); 0: none")
	network := fs.Bool("network", false, "give the VM a network interface with IPv4 and IPv6 addresses")
	debug := fs.Bool("debug", false, "debug logs (including init's console)")
	metricsListen := fs.String("metrics-listen", "", "address to serve /metrics, /healthz and /debug/pprof/ on (off when empty)")
	lf := addLimitFlags(fs)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	fs.Parse(args)
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	lim, err := lf.resolve(manifest.Limits{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: %v\n", err)
		return 2
	}
	stderr := logsink.New(os.Stderr, 0)
	defer stderr.Close(2 * time.Second)
	log := newLogger(*debug, stderr)
	lim.conn.Log = log
	codeDir, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		log.Error("code directory", "err", err)
		return 2
	}
	if st, err := os.Stat(codeDir); err != nil || !st.IsDir() {
		fmt.Fprintf(os.Stderr, "host-agent: %s is not a directory\n", fs.Arg(0))
		return 2
	}
	be, err := bf.backend(log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: %v\n", err)
		return 2
	}
	var mgr *lifecycle.Manager
	met := metrics.New(func() int { return len(mgr.Running()) })
	prog := &lifecycle.Program{ID: "main", Interface: *iface, Entrypoint: fs.Arg(1), CodeDir: codeDir, Workers: *workers, Python: *python, Network: *network,
		VCPUs: *vcpus, MemoryMiB: *memory}
	mgr = lifecycle.New(lifecycle.Options{Backend: be, InitPath: defaultInit(*initPath), Log: log, OnBoot: met.Boot, BootTimeout: *bf.bootTimeout,
		OutputRate: lim.logRate, OnOutputDropped: met.OutputDropped,
		OnOutput: func(id string, l message.Log) {
			fmt.Fprintf(stderr, "[%s %s %d] %s\n", id, l.Source, l.Origin, l.Line)
		}})

	if *metricsListen != "" {
		if err := startMetrics(*metricsListen, met, lim.conn); err != nil {
			log.Error("cannot listen for metrics", "addr", *metricsListen, "err", err)
			return 1
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("cannot listen", "addr", *listen, "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	inst, err := mgr.Acquire(ctx, prog)
	if err == nil {
		inst.Release() // booted; requests count themselves
	}
	if err != nil {
		var berr *lifecycle.BootError
		if errors.As(err, &berr) && berr.Detail != "" {
			fmt.Fprintf(os.Stderr, "%s\n", berr.Detail)
		}
		log.Error("the program did not start", "err", err)
		return 1
	}
	fmt.Printf("ferry: serving %s (%s, %s backend) on http://%s/\n", fs.Arg(1), *iface, be.Name(), ln.Addr())
	fmt.Printf("ferry: cold start %s: %s\n", time.Since(start).Round(time.Millisecond), message.FormatTimeline(inst.Timeline))
	srv := &http.Server{Handler: &front.Single{Manager: mgr, Program: prog, MaxBody: *maxBody, Timeout: *timeout, Log: log, Metrics: met,
		Limiter: front.NewLimiter(lim.requests)}, MaxHeaderBytes: relay.MaxHeaderBytes}
	lim.conn.Apply(srv)
	serveUntilDone(ctx, srv, ln, mgr, log)
	return 0
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	configPath := fs.String("config", "", "configuration file (JSON: listen, idle_timeout, programs)")
	listen := fs.String("listen", "", "address to serve HTTP on (overrides the configuration; default 127.0.0.1:8080)")
	bf := addBackendFlags(fs)
	initPath := fs.String("init", "", "init binary (default: init next to host-agent)")
	maxBody := fs.Int64("max-body", 100<<20, "largest request body in bytes (413 beyond)")
	debug := fs.Bool("debug", false, "debug logs (including init's console)")
	adminAddr := fs.String("admin", admin.DefaultSocket, "admin API: a unix socket path, or host:port (TCP needs --admin-token)")
	adminToken := fs.String("admin-token", os.Getenv("FERRY_ADMIN_TOKEN"), "bearer token the admin API requires (required on TCP)")
	metricsListen := fs.String("metrics-listen", "", "address to serve /metrics, /healthz and /debug/pprof/ on (off when empty; /metrics is also on the admin API)")
	lf := addLimitFlags(fs)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	fs.Parse(args)
	if *configPath == "" || fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	cfg, err := manifest.Load(*configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: %v\n", err)
		return 2
	}
	lim, err := lf.resolve(cfg.Limits)
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: %v\n", err)
		return 2
	}
	stderr := logsink.New(os.Stderr, 0)
	defer stderr.Close(2 * time.Second)
	log := newLogger(*debug, stderr)
	lim.conn.Log = log
	if *listen == "" {
		*listen = cfg.Listen
	}
	if *listen == "" {
		*listen = "127.0.0.1:8080"
	}
	be, err := bf.backend(log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: %v\n", err)
		return 2
	}
	var mgr *lifecycle.Manager
	var programs *front.Programs
	met := metrics.New(func() int { return len(mgr.Running()) })
	idle := cfg.IdleTimeout.Duration
	mgr = lifecycle.New(lifecycle.Options{Backend: be, InitPath: defaultInit(*initPath), Log: log, OnBoot: met.Boot, IdleTimeout: idle, MaxRunning: cfg.MaxRunning,
		BootTimeout: *bf.bootTimeout, OutputRate: lim.logRate, OnOutputDropped: met.OutputDropped,
		OnOutput: func(id string, l message.Log) {
			programs.Output(id, l)
			log.Debug("program output", "program", id, "source", string(l.Source), "origin", l.Origin, "line", string(l.Line))
		}})
	defer mgr.Close()
	programs = front.NewPrograms(mgr)
	programs.Limits = lim.requests
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for id, p := range cfg.Programs {
		if err := programs.Deploy(id, p); err != nil {
			fmt.Fprintf(os.Stderr, "host-agent: %v\n", err)
			return 2
		}
	}
	if err := startAdmin(ctx, *adminAddr, *adminToken, programs, mgr, met, lim.conn, log); err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: admin API: %v\n", err)
		return 1
	}
	if *metricsListen != "" {
		if err := startMetrics(*metricsListen, met, lim.conn); err != nil {
			log.Error("cannot listen for metrics", "addr", *metricsListen, "err", err)
			return 1
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("cannot listen", "addr", *listen, "err", err)
		return 1
	}
	fmt.Printf("ferry: serving %d programs (%s backend) on http://%s/vm/{program}/\n", len(programs.IDs()), be.Name(), ln.Addr())
	srv := &http.Server{Handler: &front.Router{Programs: programs, Manager: mgr, Metrics: met, MaxBody: *maxBody, Log: log},
		MaxHeaderBytes: relay.MaxHeaderBytes}
	lim.conn.Apply(srv)
	serveUntilDone(ctx, srv, ln, mgr, log)
	return 0
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

// startMetrics serves the metrics, /healthz and Go's profiles on their own
// listener, the operator's (the benchmarks use the profiles).
func startMetrics(addr string, met *metrics.Metrics, lim front.ConnLimits) error {
	mln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/", met.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux}
	lim.Apply(srv)
	go srv.Serve(mln)
	fmt.Printf("ferry: metrics on http://%s/metrics\n", mln.Addr())
	return nil
}

// limits are the resolved limits of `run` and `serve`.
type limits struct {
	conn     front.ConnLimits
	requests front.RequestLimits
	logRate  float64
}

// limitFlags are the flags of the agent's limits.
type limitFlags struct {
	fs                                   *flag.FlagSet
	maxConcurrent                        *int
	queue, header, body, send, keepalive *time.Duration
	logRate                              *float64
}

func addLimitFlags(fs *flag.FlagSet) *limitFlags {
	return &limitFlags{
		fs:            fs,
		maxConcurrent: fs.Int("max-concurrent", front.DefaultMaxConcurrent, "requests (websockets included) one program serves at once"),
		queue:         fs.Duration("queue-timeout", front.DefaultQueueTimeout, "how long a request past --max-concurrent waits before a 503 with Retry-After"),
		header:        fs.Duration("header-timeout", front.DefaultHeaderTimeout, "time to read a request head"),
		body:          fs.Duration("body-timeout", front.DefaultBodyTimeout, "longest wait for request body bytes (408 beyond)"),
		send:          fs.Duration("send-timeout", front.DefaultSendTimeout, "longest wait for the client to take response bytes"),
		keepalive:     fs.Duration("keepalive-timeout", front.DefaultKeepaliveTimeout, "how long an idle keep-alive connection is kept"),
		logRate:       fs.Float64("log-rate", lifecycle.DefaultOutputRate, "lines of a program's output per second kept (the rest dropped and counted); negative: no limit"),
	}
}

// resolve merges the limits: a flag given on the command line wins over
// the configuration file's value, which wins over the default.
func (f *limitFlags) resolve(file manifest.Limits) (limits, error) {
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	dur := func(name string, flagValue *time.Duration, fileValue manifest.Duration) time.Duration {
		if !set[name] && fileValue.Duration > 0 {
			return fileValue.Duration
		}
		return *flagValue
	}
	l := limits{
		conn: front.ConnLimits{Header: dur("header-timeout", f.header, file.HeaderTimeout), Body: dur("body-timeout", f.body, file.BodyTimeout),
			Send: dur("send-timeout", f.send, file.SendTimeout), Keepalive: dur("keepalive-timeout", f.keepalive, file.KeepaliveTimeout)},
		requests: front.RequestLimits{MaxConcurrent: *f.maxConcurrent, QueueTimeout: dur("queue-timeout", f.queue, file.QueueTimeout)},
		logRate:  *f.logRate,
	}
	if !set["max-concurrent"] && file.MaxConcurrent > 0 {
		l.requests.MaxConcurrent = file.MaxConcurrent
	}
	if !set["log-rate"] && file.LogRate > 0 {
		l.logRate = file.LogRate
	}
	if n := l.requests.MaxConcurrent; n < 1 || n > manifest.MaxConcurrentLimit {
		return l, fmt.Errorf("--max-concurrent must be between 1 and %d", manifest.MaxConcurrentLimit)
	}
	for name, d := range map[string]time.Duration{"queue-timeout": l.requests.QueueTimeout, "header-timeout": l.conn.Header,
		"body-timeout": l.conn.Body, "send-timeout": l.conn.Send, "keepalive-timeout": l.conn.Keepalive} {
		if d <= 0 {
			return l, fmt.Errorf("--%s must be positive", name)
		}
	}
	return l, nil
}

// serveUntilDone serves HTTP until ctx ends (SIGINT, SIGTERM), lets
// requests in flight finish, then stops every program's VM.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, mgr *lifecycle.Manager, log *slog.Logger) {
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serving", "err", err)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	mgr.StopAll(stopCtx)
}

// backendFlags choose and configure the VM backend.
type backendFlags struct {
	name, images, kernel, initrd, rootfs, accel, transport, stateDir *string
	bootTimeout                                                      *time.Duration
	sandboxRoot                                                      *string
	sandboxUIDBase                                                   *uint
	sandboxPids                                                      *int64
}

func addBackendFlags(fs *flag.FlagSet) *backendFlags {
	return &backendFlags{
		name:        fs.String("backend", "sandbox", "VM backend: sandbox (namespaces) or qemu (a microVM)"),
		images:      fs.String("images", "build/rootfs", "qemu: directory with vmlinuz, initrd.img and rootfs.squashfs (make rootfs)"),
		kernel:      fs.String("kernel", "", "qemu: kernel (default IMAGES/vmlinuz)"),
		initrd:      fs.String("initrd", "", "qemu: initrd (default IMAGES/initrd.img)"),
		rootfs:      fs.String("rootfs", "", "qemu: root image (default IMAGES/rootfs.squashfs)"),
		accel:       fs.String("accel", "auto", "qemu: auto (KVM when usable), kvm or tcg"),
		transport:   fs.String("vm-transport", "auto", "qemu: auto (vsock when the host has vhost-vsock), vsock or serial"),
		stateDir:    fs.String("state-dir", qemu.DefaultStateDir, "qemu: where code images and persistent volumes are kept"),
		bootTimeout: fs.Duration("boot-timeout", 2*time.Minute, "how long a VM may take to boot and start its program"),

		sandboxRoot:    fs.String("sandbox-root", "/", "sandbox: the directory guests see as their root filesystem, read-only (an unpacked image, or the host's /)"),
		sandboxUIDBase: fs.Uint("sandbox-uid-base", sandbox.DefaultUIDBase, "sandbox: first host uid of the guests' user namespaces (65536 ids per VM)"),
		sandboxPids:    fs.Int64("sandbox-pids", sandbox.DefaultPids, "sandbox: most processes and threads per VM"),
	}
}

// backend returns the chosen VM backend.
func (f *backendFlags) backend(log *slog.Logger) (backend.Backend, error) {
	switch *f.name {
	case "sandbox":
		b := sandbox.New(log)
		b.RootDir, b.UIDBase, b.Pids = *f.sandboxRoot, uint32(*f.sandboxUIDBase), *f.sandboxPids
		if fi, err := os.Stat(b.RootDir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--sandbox-root %s: not a directory", b.RootDir)
		}
		if err := b.CleanStale(); err != nil {
			log.Warn("cleaning up after an earlier agent", "err", err)
		}
		return b, nil
	case "qemu":
		or := func(v, def string) string {
			if v != "" {
				return v
			}
			return filepath.Join(*f.images, def)
		}
		return qemu.New(qemu.Options{Kernel: or(*f.kernel, "vmlinuz"), Initrd: or(*f.initrd, "initrd.img"), Rootfs: or(*f.rootfs, "rootfs.squashfs"),
			Accel: *f.accel, Transport: *f.transport, StateDir: *f.stateDir, Log: log})
	}
	return nil, fmt.Errorf("unknown backend %q (sandbox or qemu)", *f.name)
}

// defaultInit is the init binary: the flag's, or init next to host-agent.
func defaultInit(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	exe, _ := os.Executable()
	return filepath.Join(filepath.Dir(exe), "init")
}
