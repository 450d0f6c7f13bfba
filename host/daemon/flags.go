package daemon

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
	"github.com/ferry-vm/ferry/host/backend/sandbox"
	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/guestapi"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
)

// DefaultListen is the public HTTP address unless the command line or the
// configuration file names another.
const DefaultListen = "127.0.0.1:8080"

// ErrUsage is returned by Flags.Config for arguments that are not of the
// command's form; the caller prints the usage.
var ErrUsage = errors.New("usage")

// Flags are the command-line flags of host-agent run or serve, registered
// on a flag set by RunFlags or ServeFlags; once it is parsed, Config turns
// them and the positional arguments into the agent's Config.
type Flags struct {
	fs      *flag.FlagSet
	run     bool
	listen  string
	initBin string
	maxBody int64
	metrics string
	debug   bool
	logFmt  string
	front   string
	backend BackendOptions
	uidBase uint
	limits  limitFlags
	// the VMs' network
	ipv6Prefix, dns string
	guest           guestapi.Limits
	store           StoreOptions

	// run: the one program
	iface, python          string
	workers, vcpus, memory int
	timeout                time.Duration
	network                bool

	// serve
	configFile, admin, adminToken string
	cluster                       ClusterOptions
	join                          string
}

// RunFlags registers the flags of `host-agent run [flags] CODE_DIR
// ENTRYPOINT` on fs.
func RunFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, run: true}
	fs.StringVar(&f.listen, "listen", DefaultListen, "address to serve HTTP on")
	f.common()
	fs.StringVar(&f.iface, "interface", "asgi", "asgi or executable")
	fs.IntVar(&f.workers, "workers", 0, "ASGI worker processes (0: one per CPU)")
	fs.StringVar(&f.python, "python", "", "Python interpreter inside the VM (default /usr/bin/python3)")
	fs.IntVar(&f.vcpus, "vcpus", 0, "the VM's vCPUs (qemu: default 1; sandbox: a CPU quota, none by default)")
	fs.IntVar(&f.memory, "memory", 0, "the VM's memory in MiB (default 512; the sandbox's cgroup limit)")
	fs.DurationVar(&f.timeout, "timeout", 0, "per-request time limit (504 beyond); 0: none")
	fs.BoolVar(&f.network, "network", false, "give the VM a network interface with IPv4 and IPv6 addresses")
	return f
}

// ServeFlags registers the flags of `host-agent serve --config FILE
// [flags]` on fs.
func ServeFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.StringVar(&f.listen, "listen", "", "address to serve HTTP on (overrides the configuration; default "+DefaultListen+")")
	f.common()
	fs.StringVar(&f.configFile, "config", "", "configuration file (JSON: listen, idle_timeout, programs)")
	fs.StringVar(&f.admin, "admin", admin.DefaultSocket, "admin API: a unix socket path, or host:port (TCP needs --admin-token)")
	fs.StringVar(&f.adminToken, "admin-token", os.Getenv("FERRY_ADMIN_TOKEN"), "bearer token the admin API requires (required on TCP)")
	c := &f.cluster
	fs.StringVar(&c.NodeName, "node-name", "", "this node's name in the cluster, unique (default: the host name)")
	fs.StringVar(&c.Listen, "cluster-listen", "", "host:port where this node listens for the other nodes (default: the address it had, or a free port on 127.0.0.1)")
	fs.StringVar(&f.join, "cluster-join", "", "host:port,... of members of a cluster to join (a new node; a node with state rejoins by itself)")
	fs.IntVar(&c.Capacity.VCPUs, "capacity-vcpus", 0, "vCPUs this node offers persistent programs (default: not bounded, CPUs are shared)")
	fs.IntVar(&c.Capacity.MemoryMiB, "capacity-memory", 0, "MiB of memory this node offers persistent programs (default: the machine's)")
	fs.DurationVar(&c.Lease, "lease", cluster.DefaultLease, "lease of persistent programs: a node that cannot renew it stops them, another takes them over one lease later")
	return f
}

// common registers the flags run and serve share.
func (f *Flags) common() {
	fs, b := f.fs, &f.backend
	fs.StringVar(&f.initBin, "init", "", "init binary (default: init next to host-agent)")
	fs.Int64Var(&f.maxBody, "max-body", 100<<20, "largest request body in bytes (413 beyond)")
	fs.BoolVar(&f.debug, "debug", false, "debug logs (including init's console)")
	fs.StringVar(&f.logFmt, "log-format", "text", "the agent's log on stderr: text, or json (one slog JSON object a line)")
	fs.StringVar(&f.front, "front", "loop", "the HTTP front: loop (an event loop serves plain requests to running ASGI programs straight from their workers' channels, and hands the rest to net/http), or net/http (Go's HTTP server alone)")
	metricsHelp := "address to serve /metrics, /healthz and /debug/pprof/ on (off when empty)"
	if !f.run {
		metricsHelp = "address to serve /metrics, /healthz and /debug/pprof/ on (off when empty; /metrics is also on the admin API)"
	}
	fs.StringVar(&f.metrics, "metrics-listen", "", metricsHelp)

	fs.StringVar(&b.Name, "backend", "sandbox", "VM backend: sandbox (namespaces) or qemu (a microVM)")
	fs.StringVar(&b.Images, "images", "build/rootfs", "qemu: directory with vmlinuz, initrd.img and rootfs.squashfs (make rootfs)")
	fs.StringVar(&b.Kernel, "kernel", "", "qemu: kernel (default IMAGES/vmlinuz)")
	fs.StringVar(&b.Initrd, "initrd", "", "qemu: initrd (default IMAGES/initrd.img)")
	fs.StringVar(&b.Rootfs, "rootfs", "", "qemu: root image (default IMAGES/rootfs.squashfs)")
	fs.StringVar(&b.Accel, "accel", "auto", "qemu: auto (KVM when usable), kvm or tcg")
	fs.StringVar(&b.Transport, "vm-transport", "auto", "qemu: auto (vsock when the host has vhost-vsock), vsock or serial")
	fs.StringVar(&b.StateDir, "state-dir", defaultStateDir(), "the agent's state: the cluster's (serve) in STATE/cluster, the qemu backend's code images and persistent volumes in STATE/qemu")
	fs.DurationVar(&b.BootTimeout, "boot-timeout", 2*time.Minute, "how long a VM may take to boot and start its program")
	fs.StringVar(&b.SandboxRoot, "sandbox-root", "/", "sandbox: the directory guests see as their root filesystem, read-only (an unpacked image, or the host's /)")
	fs.UintVar(&f.uidBase, "sandbox-uid-base", sandbox.DefaultUIDBase, "sandbox: first host uid of the guests' user namespaces (65536 ids per VM)")
	fs.Int64Var(&b.SandboxPids, "sandbox-pids", sandbox.DefaultPids, "sandbox: most processes and threads per VM")

	fs.StringVar(&f.ipv6Prefix, "ipv6-prefix", "", "network: the node's routed IPv6 prefix (a /115 or larger, e.g. a /64): each VM gets a /124 of it, answered for on the uplink (NDP proxy); default: private fd00:f3:7:N::/64 addresses")
	fs.StringVar(&b.Uplink, "uplink", "", "network: the interface toward the outside, for NAT, port forwards and the NDP proxy (default: the default route's)")
	fs.StringVar(&f.dns, "dns", "", "network: the VMs' DNS resolvers, comma-separated (default: the host's non-loopback ones from /etc/resolv.conf, else /run/systemd/resolve/resolv.conf)")
	f.limits.register(fs)
	f.store.register(fs)
	g := &f.guest
	fs.Float64Var(&g.Rate, "guest-api-rate", guestapi.DefaultRate, "guest API calls per second one program makes, sustained (429 beyond)")
	fs.IntVar(&g.Burst, "guest-api-burst", guestapi.DefaultBurst, "guest API calls one program makes at once above --guest-api-rate")
	fs.Float64Var(&g.WriteRate, "kv-write-rate", guestapi.DefaultWriteRate, "bytes of keys and values one program writes per second, sustained, after a burst of --kv-max-bytes (429 beyond)")
	fs.IntVar(&g.MaxKeys, "kv-max-keys", guestapi.DefaultMaxKeys, "keys one program holds in its store")
	fs.IntVar(&g.MaxValue, "kv-max-value", guestapi.DefaultMaxValue, fmt.Sprintf("largest value in bytes a program stores (at most %d)", cluster.MaxValue))
	fs.Int64Var(&g.MaxBytes, "kv-max-bytes", guestapi.DefaultMaxBytes, "bytes of keys and values one program holds in its store")
}

// checkGuest refuses guest API limits that bound nothing or too much.
func checkGuest(g guestapi.Limits) error {
	switch {
	case g.Rate <= 0 || g.Burst <= 0:
		return errors.New("--guest-api-rate and --guest-api-burst must be positive")
	case g.WriteRate <= 0:
		return errors.New("--kv-write-rate must be positive")
	case g.MaxKeys <= 0 || g.MaxBytes <= 0:
		return errors.New("--kv-max-keys and --kv-max-bytes must be positive")
	case g.MaxValue <= 0 || g.MaxValue > cluster.MaxValue:
		return fmt.Errorf("--kv-max-value must be from 1 to %d", cluster.MaxValue)
	}
	return nil
}

// networkFlags reads the network flags into b.
func (f *Flags) networkFlags(b *BackendOptions) error {
	if f.ipv6Prefix != "" {
		p, err := hostnet.ParsePrefix(f.ipv6Prefix)
		if err != nil {
			return fmt.Errorf("--ipv6-prefix: %w", err)
		}
		b.IPv6Prefix = p
	}
	if f.dns != "" {
		dns, err := hostnet.ParseDNS(f.dns)
		if err != nil {
			return fmt.Errorf("--dns: %w", err)
		}
		b.DNS = dns
	}
	return nil
}

// Config returns the agent's Config from the parsed flags and the
// positional arguments: run's CODE_DIR and ENTRYPOINT become a
// one-program manifest; serve reads its configuration file. A *ConfigError
// says what is wrong; ErrUsage, that the arguments are not of the
// command's form.
func (f *Flags) Config(args []string) (*Config, error) {
	if err := checkGuest(f.guest); err != nil {
		return nil, &ConfigError{err}
	}
	if f.run {
		return f.runConfig(args)
	}
	return f.serveConfig(args)
}

// runConfig is run's configuration: one program, served at /.
func (f *Flags) runConfig(args []string) (*Config, error) {
	if len(args) != 2 {
		return nil, ErrUsage
	}
	lim, err := f.limits.resolve(f.fs, manifest.Limits{})
	if err != nil {
		return nil, &ConfigError{err}
	}
	codeDir, err := filepath.Abs(args[0])
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("code directory: %w", err)}
	}
	if st, err := os.Stat(codeDir); err != nil || !st.IsDir() {
		return nil, &ConfigError{fmt.Errorf("%s is not a directory", args[0])}
	}
	workers := f.workers
	p := &manifest.Program{
		Code:        manifest.Code{Encoding: "directory", Entrypoint: args[1], Interface: f.iface, Path: codeDir},
		Resources:   manifest.Resources{VCPUs: f.vcpus, Memory: f.memory, Seconds: f.timeout.Seconds(), Workers: &workers},
		Environment: manifest.Environment{Internet: f.network},
		On:          manifest.On{HTTP: true},
	}
	if f.python != "" {
		p.Runtime = &manifest.Runtime{Python: f.python}
	}
	file, err := manifest.OneProgram(p)
	if err != nil {
		return nil, &ConfigError{err}
	}
	cfg, err := f.shared(file, lim)
	if err != nil {
		return nil, err
	}
	cfg.Store = f.store
	cfg.Listen, cfg.EchoOutput = f.listen, true
	return cfg, nil
}

// serveConfig is serve's configuration: the file's programs, with an
// admin API.
func (f *Flags) serveConfig(args []string) (*Config, error) {
	if f.configFile == "" || len(args) != 0 {
		return nil, ErrUsage
	}
	file, err := manifest.Load(f.configFile)
	if err != nil {
		return nil, &ConfigError{err}
	}
	lim, err := f.limits.resolve(f.fs, file.Limits)
	if err != nil {
		return nil, &ConfigError{err}
	}
	cfg, err := f.shared(file, lim)
	if err != nil {
		return nil, err
	}
	cfg.Store = f.store
	cfg.Listen = f.listen
	if cfg.Listen == "" {
		cfg.Listen = file.Listen
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	cfg.Admin, cfg.AdminToken = f.admin, f.adminToken
	cfg.ConfigPath = f.configFile
	if cfg.Admin != "" && !admin.IsUnix(cfg.Admin) && cfg.AdminToken == "" {
		return nil, &ConfigError{errors.New("the admin API on TCP needs a token (--admin-token or FERRY_ADMIN_TOKEN)")}
	}
	c := f.cluster
	c.StateDir = f.backend.StateDir
	for _, addr := range strings.Split(f.join, ",") {
		if addr = strings.TrimSpace(addr); addr != "" {
			c.Join = append(c.Join, addr)
		}
	}
	if c.Lease <= 0 {
		return nil, &ConfigError{errors.New("--lease must be positive")}
	}
	cfg.Cluster = &c
	return cfg, nil
}

// shared is the part of the Config run and serve share.
func (f *Flags) shared(file *manifest.File, lim Limits) (*Config, error) {
	b := f.backend
	b.SandboxUIDBase = uint32(f.uidBase)
	if f.logFmt != "text" && f.logFmt != "json" {
		return nil, &ConfigError{fmt.Errorf("--log-format %q: text or json", f.logFmt)}
	}
	if f.front != "net/http" && f.front != "loop" {
		return nil, &ConfigError{fmt.Errorf("--front %q: net/http or loop", f.front)}
	}
	if err := f.networkFlags(&b); err != nil {
		return nil, &ConfigError{err}
	}
	initBin := f.initBin
	if initBin == "" {
		exe, _ := os.Executable()
		initBin = filepath.Join(filepath.Dir(exe), "init")
	}
	return &Config{File: file, BackendOptions: b, InitPath: initBin, MaxBody: f.maxBody, Limits: lim, MetricsListen: f.metrics, Debug: f.debug, LogJSON: f.logFmt == "json", GuestAPI: f.guest, LoopFront: f.front == "loop"}, nil
}

// limitFlags are the flags of the agent's limits.
type limitFlags struct {
	maxConcurrent                        int
	queue, header, body, send, keepalive time.Duration
	logRate                              float64
}

func (l *limitFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&l.maxConcurrent, "max-concurrent", front.DefaultMaxConcurrent, "requests (websockets included) one program serves at once")
	fs.DurationVar(&l.queue, "queue-timeout", front.DefaultQueueTimeout, "how long a request past --max-concurrent waits before a 503 with Retry-After")
	fs.DurationVar(&l.header, "header-timeout", front.DefaultHeaderTimeout, "time to read a request head")
	fs.DurationVar(&l.body, "body-timeout", front.DefaultBodyTimeout, "longest wait for request body bytes (408 beyond)")
	fs.DurationVar(&l.send, "send-timeout", front.DefaultSendTimeout, "longest wait for the client to take response bytes")
	fs.DurationVar(&l.keepalive, "keepalive-timeout", front.DefaultKeepaliveTimeout, "how long an idle keep-alive connection is kept")
	fs.Float64Var(&l.logRate, "log-rate", lifecycle.DefaultOutputRate, "lines of a program's output per second kept (the rest dropped and counted); negative: no limit")
}

// resolve merges the limits: a flag given on the command line wins over
// the configuration file's value, which wins over the default.
func (l *limitFlags) resolve(fs *flag.FlagSet, file manifest.Limits) (Limits, error) {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	dur := func(name string, flagValue time.Duration, fileValue manifest.Duration) time.Duration {
		if !set[name] && fileValue.Duration > 0 {
			return fileValue.Duration
		}
		return flagValue
	}
	r := Limits{
		Conn: front.ConnLimits{Header: dur("header-timeout", l.header, file.HeaderTimeout), Body: dur("body-timeout", l.body, file.BodyTimeout),
			Send: dur("send-timeout", l.send, file.SendTimeout), Keepalive: dur("keepalive-timeout", l.keepalive, file.KeepaliveTimeout)},
		Requests: front.RequestLimits{MaxConcurrent: l.maxConcurrent, QueueTimeout: dur("queue-timeout", l.queue, file.QueueTimeout)},
		LogRate:  l.logRate,
	}
	if !set["max-concurrent"] && file.MaxConcurrent > 0 {
		r.Requests.MaxConcurrent = file.MaxConcurrent
	}
	if !set["log-rate"] && file.LogRate > 0 {
		r.LogRate = file.LogRate
	}
	if n := r.Requests.MaxConcurrent; n < 1 || n > manifest.MaxConcurrentLimit {
		return r, fmt.Errorf("--max-concurrent must be between 1 and %d", manifest.MaxConcurrentLimit)
	}
	for name, d := range map[string]time.Duration{"queue-timeout": r.Requests.QueueTimeout, "header-timeout": r.Conn.Header,
		"body-timeout": r.Conn.Body, "send-timeout": r.Conn.Send, "keepalive-timeout": r.Conn.Keepalive} {
		if d <= 0 {
			return r, fmt.Errorf("--%s must be positive", name)
		}
	}
	return r, nil
}
