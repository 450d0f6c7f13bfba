package cluster

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"
)

// attemptTimeout bounds one attempt of the database driver to reach a
// member: a member that is stopped (not dead: its sockets still accept)
// costs this long, not the 15 s go-dqlite waits by default, so the
// others' heartbeats and writes find the new leader within a lease.
const attemptTimeout = time.Second

// drivers numbers the dqlite drivers this process registers with
// database/sql (registration is by unique name, for the process's life).
var drivers atomic.Int64

// openDB opens the node's database through a dqlite driver of its own:
// one whose member list is a memberStore and whose attempts are bounded
// by attemptTimeout (go-dqlite's App.Open would use the App's driver,
// whose store races and whose attempts take 15 s).
func (n *Node) openDB(ctx context.Context) (*sql.DB, error) {
	n.memberList = &memberStore{}
	n.memberList.Set(ctx, append([]client.NodeInfo{{Address: n.opt.Address}}, joinInfos(n.opt.Join)...))
	n.refreshMembers(ctx)
	drv, err := driver.New(n.memberList, driver.WithAttemptTimeout(attemptTimeout), driver.WithLogFunc(dqliteLog(n.log)))
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("ferry-dqlite-%d", drivers.Add(1))
	sql.Register(name, drv)
	db, err := sql.Open(name, database)
	if err != nil {
		return nil, err
	}
	// Connections to a member that stopped answering are dropped by the
	// driver; idle ones are renewed now and then all the same.
	db.SetConnMaxIdleTime(30 * time.Second)
	refresh, stop := context.WithCancel(context.Background())
	n.stopMembers = stop
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-refresh.Done():
				return
			case <-tick.C:
				n.refreshMembers(refresh)
			}
		}
	}()
	if err := retry(ctx, func() error { return db.PingContext(ctx) }); err != nil {
		db.Close()
		stop()
		return nil, err
	}
	return db, nil
}

// refreshMembers asks the local dqlite engine for the cluster's members.
func (n *Node) refreshMembers(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	local, err := n.app.Client(ctx)
	if err != nil {
		return
	}
	defer local.Close()
	if members, err := local.Cluster(ctx); err == nil && len(members) > 0 {
		n.memberList.Set(ctx, members)
	}
}

func joinInfos(addrs []string) []client.NodeInfo {
	var out []client.NodeInfo
	for _, a := range addrs {
		out = append(out, client.NodeInfo{Address: a})
	}
	return out
}

// memberStore is the driver's list of members (client.NodeStore). Unlike
// go-dqlite's own stores, it hands out copies: the driver's connectors
// sort what they get, from several goroutines.
type memberStore struct {
	mu    sync.Mutex
	nodes []client.NodeInfo
}

// Get implements client.NodeStore.
func (s *memberStore) Get(context.Context) ([]client.NodeInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.nodes), nil
}

// Set implements client.NodeStore.
func (s *memberStore) Set(_ context.Context, nodes []client.NodeInfo) error {
	s.mu.Lock()
	s.nodes = slices.Clone(nodes)
	s.mu.Unlock()
	return nil
}
