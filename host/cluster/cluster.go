// Package cluster keeps the host agent's state in dqlite, Raft-replicated
// SQLite: the deployed programs with their revisions, the nodes with their
// capacity and heartbeats, which node runs each persistent program (a
// lease with a fencing token) and the key-value store of the guest API.
//
// A single agent is a one-node cluster; more agents join it by address.
// Every node reads and writes the same database through its dqlite
// driver, which sends writes to the Raft leader; a write without a quorum
// of voters fails with ErrNoQuorum instead of waiting for ever.
package cluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
)

// Defaults of a node.
const (
	// DefaultLease is how long a persistent program's owner may go
	// without renewing before another node takes the program over.
	DefaultLease = 5 * time.Second
	// writeTimeout bounds one write: past it, the cluster is taken to
	// have no quorum.
	writeTimeout = 5 * time.Second
	// database is the dqlite database's name.
	database = "ferry"
)

// ErrNoQuorum is returned for a change the cluster cannot commit: too
// few voters are reachable to elect a leader.
var ErrNoQuorum = errors.New("no quorum: too few cluster nodes are reachable to commit a change")

// Capacity is what a node offers its VMs.
type Capacity struct {
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memory_mib"`
}

// Options configure a node.
type Options struct {
	// Dir holds the node's dqlite data (made if missing).
	Dir string
	// Name is the node's name, unique in the cluster.
	Name string
	// Address is where the node listens for the other nodes (host:port).
	Address string
	// Join lists members to join through, for a node that is new; a
	// node that has state rejoins on its own and ignores them.
	Join []string
	// Capacity is what the node offers.
	Capacity Capacity
	// Lease is the lease period of persistent programs (DefaultLease).
	Lease time.Duration
	// IPv6Prefix is the node's routed prefix for its VMs (none when not
	// valid); Open refuses one that overlaps another node's.
	IPv6Prefix netip.Prefix
	// Log receives the node's and dqlite's messages.
	Log *slog.Logger
}

// Node is this agent's member of the cluster.
type Node struct {
	opt  Options
	log  *slog.Logger
	app  *app.App
	db   *sql.DB
	slot int
	// memberList is the list of members the database driver tries, kept
	// current by a goroutine that stopMembers ends.
	memberList  *memberStore
	stopMembers context.CancelFunc

	closeOnce sync.Once
	closeErr  error
}

// Open starts the node: it bootstraps a new cluster, joins one through
// opt.Join, or rejoins with the state in opt.Dir, and registers the node
// under its name. ctx bounds the wait for the cluster.
func Open(ctx context.Context, opt Options) (*Node, error) {
	if opt.Lease <= 0 {
		opt.Lease = DefaultLease
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Name == "" || strings.ContainsAny(opt.Name, " \t\n/") {
		return nil, fmt.Errorf("cluster: node name %q: want a non-empty name without spaces or slashes", opt.Name)
	}
	if err := prepareDir(opt.Dir); err != nil {
		return nil, err
	}
	dq, err := app.New(opt.Dir,
		app.WithAddress(opt.Address),
		app.WithCluster(opt.Join),
		app.WithRolesAdjustmentFrequency(time.Second),
		app.WithLogFunc(dqliteLog(opt.Log)),
	)
	if err != nil {
		return nil, stateDirError(opt, err)
	}
	n := &Node{opt: opt, log: opt.Log, app: dq}
	fail := func(err error) (*Node, error) {
		n.halt()
		return nil, err
	}
	if err := dq.Ready(ctx); err != nil {
		return fail(fmt.Errorf("cluster: the node at %s did not become ready (joining through %v): %w", opt.Address, opt.Join, err))
	}
	if err := n.checkMembership(ctx); err != nil {
		return fail(err)
	}
	if n.db, err = n.openDB(ctx); err != nil {
		return fail(fmt.Errorf("cluster: opening the database: %w", err))
	}
	if err := n.migrate(ctx); err != nil {
		return fail(err)
	}
	if err := n.register(ctx); err != nil {
		return fail(err)
	}
	return n, nil
}

// prepareDir makes the state directory and checks it is writable.
func prepareDir(dir string) error {
	if dir == "" {
		return errors.New("cluster: no state directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cluster: state directory: %w", err)
	}
	probe := filepath.Join(dir, ".writable")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return fmt.Errorf("cluster: state directory %s is not writable: %w", dir, err)
	}
	return os.Remove(probe)
}

// stateDirError explains a state directory dqlite refused.
func stateDirError(opt Options, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "does not match"):
		return fmt.Errorf("cluster: the state directory %s belongs to another node (%v); give each node its own --state-dir", opt.Dir, err)
	case strings.Contains(msg, "yaml"), strings.Contains(msg, "inconsistent"):
		return fmt.Errorf("cluster: the state directory %s is damaged (%v); move it away to start this node afresh", opt.Dir, err)
	}
	return fmt.Errorf("cluster: starting the node: %w", err)
}

// checkMembership refuses a state directory from another cluster: a node
// asked to join through members whose cluster does not count it. A join
// address that does not answer (a member since removed) proves nothing
// and is passed over.
func (n *Node) checkMembership(ctx context.Context) error {
	foreign := ""
	for _, addr := range n.opt.Join {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		members, err := clusterOf(actx, addr)
		cancel()
		if err != nil {
			continue
		}
		// By id and address: every cluster's first node has id 1.
		if slices.ContainsFunc(members, func(m client.NodeInfo) bool { return m.ID == n.app.ID() && m.Address == n.opt.Address }) {
			return nil
		}
		foreign = addr
	}
	if foreign != "" {
		return fmt.Errorf("cluster: the state directory %s is of another cluster than the one %s belongs to; use a new --state-dir to join it", n.opt.Dir, foreign)
	}
	return nil
}

// clusterOf asks the leader of the cluster the member at addr belongs to
// for its members. Not the member itself: a follower's view of the
// membership can lag the leader's, and a node that has just been added
// (by the leader) would find itself missing from it and refuse its own
// state directory.
func clusterOf(ctx context.Context, addr string) ([]client.NodeInfo, error) {
	store := client.NewInmemNodeStore()
	if err := store.Set(ctx, []client.NodeInfo{{Address: addr}}); err != nil {
		return nil, err
	}
	cli, err := client.FindLeader(ctx, store)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return cli.Cluster(ctx)
}

// members returns the dqlite cluster's members, as the leader knows them.
func (n *Node) members(ctx context.Context) ([]client.NodeInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	cli, err := n.leaderClient(ctx)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	members, err := cli.Cluster(ctx)
	if err != nil {
		return nil, noQuorum(fmt.Errorf("cluster: listing members: %w", err))
	}
	return members, nil
}

// leaderClient connects to the leader.
func (n *Node) leaderClient(ctx context.Context) (*client.Client, error) {
	cli, err := n.app.Leader(ctx)
	if err != nil {
		return nil, noQuorum(fmt.Errorf("cluster: finding the leader: %w", err))
	}
	return cli, nil
}

// Name is the node's name.
func (n *Node) Name() string { return n.opt.Name }

// Address is the node's cluster address.
func (n *Node) Address() string { return n.opt.Address }

// Lease is the lease period of persistent programs.
func (n *Node) Lease() time.Duration { return n.opt.Lease }

// Close leaves the cluster gracefully: leadership and voting rights go to
// other nodes first (when there are any), so that the cluster keeps its
// quorum without this node.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() {
		if err := n.app.Handover(ctx); err != nil {
			n.log.Warn("cluster: handing over before leaving", "err", err)
		}
		n.closeErr = n.halt()
	})
	return n.closeErr
}

// halt stops the node at once, without handing anything over (as a crash
// would).
func (n *Node) halt() error {
	if n.stopMembers != nil {
		n.stopMembers()
	}
	if n.db != nil {
		n.db.Close()
	}
	return n.app.Close()
}

// IsLeader reports whether this node is the Raft leader, which places the
// persistent programs.
func (n *Node) IsLeader(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	local, err := n.app.Client(ctx)
	if err != nil {
		return false
	}
	defer local.Close()
	leader, err := local.Leader(ctx)
	return err == nil && leader != nil && leader.Address == n.opt.Address
}

// noQuorum turns the errors of a write that found no leader into
// ErrNoQuorum.
func noQuorum(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "no available dqlite leader") ||
		strings.Contains(msg, "not leader") || strings.Contains(msg, "leadership lost") || strings.Contains(msg, "context deadline exceeded") {
		return fmt.Errorf("%w (%v)", ErrNoQuorum, err)
	}
	return err
}

// dqliteLog passes dqlite's messages to log, errors and warnings as they
// are and the rest at debug level.
func dqliteLog(log *slog.Logger) client.LogFunc {
	return func(l client.LogLevel, format string, a ...any) {
		msg := "dqlite: " + fmt.Sprintf(format, a...)
		switch l {
		case client.LogError:
			log.Error(msg)
		case client.LogWarn:
			log.Warn(msg)
		default:
			log.Debug(msg)
		}
	}
}
