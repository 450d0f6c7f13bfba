package daemon

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/catalog"
	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/persist"
	"gopkg.in/yaml.v2"
)

// DefaultStateDir is the agent's state directory: the cluster's state in
// STATE/cluster, the qemu backend's images and volumes in STATE/qemu.
const DefaultStateDir = "/var/lib/ferry"

// defaultStateDir is DefaultStateDir for root; an agent run by another
// user keeps its state in its own ~/.local/state/ferry.
func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return DefaultStateDir
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "ferry")
	}
	return DefaultStateDir
}

// ClusterOptions make serve's agent a node of a dqlite cluster (a lone
// agent is a cluster of one).
type ClusterOptions struct {
	// NodeName is the node's name, unique in the cluster (default: the
	// machine's host name).
	NodeName string
	// StateDir is the agent's state directory; the cluster keeps its
	// state in StateDir/cluster.
	StateDir string
	// Listen is where the node listens for the other nodes; empty: the
	// address it had (recorded in its state), or a free port on
	// 127.0.0.1 for a new node.
	Listen string
	// Join lists members of an existing cluster to join through.
	Join []string
	// Capacity is what the node offers its persistent programs (default:
	// the machine's memory, and vCPUs not bounded: CPUs are shared).
	Capacity cluster.Capacity
	// Lease is the lease period of persistent programs
	// (cluster.DefaultLease when 0).
	Lease time.Duration
}

// openTimeout bounds the wait for the cluster at the agent's start.
const openTimeout = time.Minute

// openCluster opens this agent's node of the cluster.
func openCluster(ctx context.Context, o ClusterOptions, a *agent) (*cluster.Node, error) {
	dir := filepath.Join(o.StateDir, "cluster")
	if o.NodeName == "" {
		o.NodeName, _ = os.Hostname()
	}
	if o.Listen == "" {
		var err error
		if o.Listen, err = clusterAddress(dir); err != nil {
			return nil, err
		}
	}
	if o.Capacity.MemoryMiB <= 0 {
		o.Capacity.MemoryMiB = machineMemoryMiB()
	}
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	node, err := cluster.Open(ctx, cluster.Options{Dir: dir, Name: o.NodeName, Address: o.Listen, Join: o.Join,
		Capacity: o.Capacity, Lease: o.Lease, IPv6Prefix: a.cfg.BackendOptions.IPv6Prefix, Log: a.log})
	if err != nil {
		return nil, err
	}
	a.log.Info("cluster node ready", "node", o.NodeName, "address", o.Listen, "slot", node.Slot(),
		"vcpus", o.Capacity.VCPUs, "memory_mib", o.Capacity.MemoryMiB, "lease", node.Lease())
	return node, nil
}

// clusterAddress is a node's address when none is given: the one recorded
// in its state, or a free loopback port for a new node (a lone agent).
func clusterAddress(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, "info.yaml"))
	if err == nil {
		var info struct {
			Address string `yaml:"Address"`
		}
		if err := yaml.Unmarshal(data, &info); err == nil && info.Address != "" {
			return info.Address, nil
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("cluster: choosing an address: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// machineMemoryMiB is the machine's memory (MemTotal), or 1 GiB if it
// cannot be read.
func machineMemoryMiB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 1024
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			if kib, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB")); err == nil {
				return kib / 1024
			}
		}
	}
	return 1024
}

// clustered is the part of serve's agent that the cluster drives.
type clustered struct {
	node       *cluster.Node
	catalog    *catalog.Catalog
	supervisor *persist.Supervisor
	placer     *cluster.Scheduler

	mu         sync.Mutex
	placement  map[string]cluster.Assignment // as last read, for where a program runs
	placedRead time.Time
	forwardKey []byte // the cluster's forwarding key, once read

	// The nodes' public addresses, as last read (or tried: a failure
	// waits a second too), under a lock of their own: a slow read must
	// not hold up the placement's readers.
	publicMu   sync.Mutex
	public     map[string]string
	publicRead time.Time
}

// startCluster stores the file's programs, then keeps the local programs
// and this node's share of the persistent ones in step with the cluster
// until ctx ends; done is closed when the supervisor has stopped.
func (a *agent) startCluster(ctx context.Context, node *cluster.Node) (*clustered, <-chan struct{}, error) {
	c := &clustered{node: node, catalog: catalog.New(node, a.programs, a.log), placer: node.NewScheduler()}
	c.supervisor = persist.New(persist.Options{Store: node, Placer: c.placer, Wanted: c.catalog.Wanted, Log: a.log,
		Runner: &persistRunner{programs: a.programs, manager: a.manager, node: node.Name(), lease: node.Lease()}})
	c.catalog.Changed = c.supervisor.Restart
	if err := c.catalog.LoadFile(ctx, a.cfg.File.Programs); err != nil {
		return nil, nil, err
	}
	go c.catalog.Run(ctx)
	go node.SweepKeys(ctx, sweepPeriod)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.supervisor.Run(ctx)
	}()
	return c, done, nil
}

// Owner says where a persistent program runs: here, under a valid lease,
// or on the node the cluster assigned it to (front.Router.Owner,
// admin.ClusterView).
func (c *clustered) Owner(id string) (bool, string) {
	if _, ok := c.supervisor.Token(id); ok {
		return true, ""
	}
	a, _ := c.assignment(id)
	return false, a.Node
}

// Peer returns where node serves programs (cluster.Node.Advertise), read
// at most once a second; "" when it has not said (front.Forwarder.Peer).
func (c *clustered) Peer(node string) string {
	c.publicMu.Lock()
	defer c.publicMu.Unlock()
	if time.Since(c.publicRead) > time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		public, err := c.node.PublicAddresses(ctx)
		cancel()
		if err == nil {
			c.public = public
		}
		c.publicRead = time.Now()
	}
	return c.public[node]
}

// Live reports whether node's heartbeat is current as this node observes
// the cluster (front.Forwarder: a node that stopped beating for a lease is
// not forwarded to). A node not observed yet counts as live.
func (c *clustered) Live(node string) bool {
	d, ok := c.placer.Silence()[node]
	return !ok || d <= c.node.Lease()
}

// ForwardKey returns the cluster's key for the agent's requests forwarded
// between nodes (front.Forwarder), nil until advertise has read it.
func (c *clustered) ForwardKey() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.forwardKey
}

// advertise records where this node serves programs, ln's address (its
// host the cluster address's when ln listens on every address), and reads
// the cluster's forwarding key, retrying until the cluster answers or ctx
// ends: until then, the other nodes answer 503 for the persistent
// programs this node runs rather than forward their requests here, and
// this node forwards no event.
func (c *clustered) advertise(ctx context.Context, ln net.Addr, log *slog.Logger) {
	public, err := publicAddress(ln, c.node.Address())
	if err != nil {
		// Still read the key: this node forwards to the others.
		log.Warn("cluster: the other nodes cannot forward requests for this node's persistent programs here; they answer 503 naming it", "err", err)
	}
	for {
		// The key first: once the address is known, the other nodes
		// send events here, which need it.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		key, err := c.node.ForwardKey(actx)
		if err == nil {
			c.mu.Lock()
			c.forwardKey = key
			c.mu.Unlock()
			err = c.node.Advertise(actx, public)
		}
		cancel()
		if err == nil {
			if public != "" {
				log.Info("cluster: the other nodes forward requests for this node's persistent programs here", "public", public)
			}
			return
		}
		log.Warn("cluster: recording this node's public address", "public", public, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// publicAddress is where the other nodes reach a public listener at ln:
// its address, with the host of the node's cluster address when ln
// listens on every address (0.0.0.0, ::). It is an error ("" is then
// advertised: nothing is forwarded here) for a listener the other nodes
// cannot reach: on loopback while the cluster address is not, or on
// every IPv4 address while the cluster address is IPv6.
func publicAddress(ln net.Addr, clusterAddr string) (string, error) {
	tcp, ok := ln.(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("the public listener %s is not TCP", ln)
	}
	listen, _ := netip.AddrFromSlice(tcp.IP)
	listen = listen.Unmap()
	clusterHost, _, err := net.SplitHostPort(clusterAddr)
	if err != nil {
		return "", fmt.Errorf("the cluster address %q: %w", clusterAddr, err)
	}
	cluster, err := netip.ParseAddr(clusterHost)
	if err != nil {
		// A host name: loopback only if it is "localhost".
		cluster = netip.Addr{}
	}
	clusterLoopback := cluster.IsLoopback() || !cluster.IsValid() && strings.EqualFold(clusterHost, "localhost")
	switch {
	case listen.IsLoopback() && !clusterLoopback:
		return "", fmt.Errorf("the public listener %s is on loopback, which the other nodes (at %s) cannot reach", ln, clusterAddr)
	case listen.IsUnspecified():
		if listen.Is4() && cluster.Is6() {
			return "", fmt.Errorf("the public listener %s takes IPv4 only, and the cluster address %s is IPv6", ln, clusterAddr)
		}
		return net.JoinHostPort(clusterHost, strconv.Itoa(tcp.Port)), nil
	}
	return tcp.String(), nil
}

// assignment returns a persistent program's placement, read at most once
// a second.
func (c *clustered) assignment(id string) (cluster.Assignment, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.placedRead) > time.Second {
		// Briefly: a request or a status waits on it, and without a
		// quorum nothing answers.
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		all, err := c.node.Assignments(ctx)
		cancel()
		if err == nil {
			c.placement = map[string]cluster.Assignment{}
			for _, a := range all {
				c.placement[a.Program] = a
			}
			c.placedRead = time.Now()
		}
	}
	a, ok := c.placement[id]
	return a, ok
}

// Status is the cluster as `host-agent cluster status` shows it
// (admin.ClusterView).
func (c *clustered) Status(ctx context.Context) (*admin.ClusterStatus, error) {
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	assignments, err := c.node.Assignments(ctx)
	if err != nil {
		return nil, err
	}
	silence := c.placer.Silence()
	st := &admin.ClusterStatus{Node: c.node.Name(), Lease: c.node.Lease().String()}
	for _, n := range nodes {
		ns := admin.ClusterNode{NodeInfo: n, LastHeartbeat: -1}
		if d, ok := silence[n.Name]; ok {
			ns.LastHeartbeat = d.Seconds()
		}
		st.Nodes = append(st.Nodes, ns)
		if n.Leader {
			st.Leader = n.Name
		}
	}
	for _, a := range assignments {
		if a.Node != "" {
			st.Programs = append(st.Programs, a)
		}
	}
	return st, nil
}

// Placement is a persistent program's node and token (admin.ClusterView).
func (c *clustered) Placement(id string) (string, int64) {
	a, ok := c.assignment(id)
	if !ok {
		return "", 0
	}
	return a.Node, a.Token
}

// persistRunner runs this node's copies of persistent programs with the
// lifecycle manager (persist.Runner).
type persistRunner struct {
	programs *front.Programs
	manager  *lifecycle.Manager
	node     string
	lease    time.Duration
}

// Run keeps the program's VM running, with its fencing token in its
// environment (FERRY_FENCING_TOKEN, and FERRY_NODE), until ctx ends;
// then stops it, killing it if it does not stop within a tenth of the
// lease: it must be gone before another node may start it.
func (r *persistRunner) Run(ctx context.Context, id string, token int64) {
	var route *front.Route
	for route = r.programs.Route(id); route == nil; route = r.programs.Route(id) {
		// Assigned before this node applied the deploy: wait for it.
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	p := *route.Program
	p.Env = map[string]string{}
	for k, v := range route.Program.Env {
		p.Env[k] = v
	}
	p.Env["FERRY_FENCING_TOKEN"] = strconv.FormatInt(token, 10)
	p.Env["FERRY_NODE"] = r.node
	r.manager.Persist(ctx, &p)
	stop, cancel := context.WithTimeout(context.Background(), r.lease/10)
	defer cancel()
	r.manager.Stop(stop, id) // past the deadline, the VM is killed and waited for
}

// RemoveNode takes a node out of the cluster (admin.ClusterView).
func (c *clustered) RemoveNode(ctx context.Context, name string) error {
	return c.node.RemoveNode(ctx, name)
}

// KVGet reads a program's key (admin.ClusterView).
func (c *clustered) KVGet(ctx context.Context, program, key string) ([]byte, error) {
	return c.node.KVGet(ctx, program, key)
}

// KVPut writes a program's key, fenced by token (admin.ClusterView).
func (c *clustered) KVPut(ctx context.Context, program, key string, value []byte, token int64) error {
	return c.node.KVPut(ctx, program, key, value, token)
}

// KVDelete removes a program's key, fenced by token (admin.ClusterView).
func (c *clustered) KVDelete(ctx context.Context, program, key string, token int64) error {
	return c.node.KVDelete(ctx, program, key, token)
}
