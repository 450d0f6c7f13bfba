package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/host/trigger"
)

// fires says whether this agent fires a program's schedule
// (trigger.Options.Fires): in a cluster, a persistent program's on the
// node that runs it, any other's on the Raft leader alone; without a
// cluster (run), always.
func (a *agent) fires(ctx context.Context, id string, persistent bool) bool {
	if a.cluster == nil {
		return true
	}
	if persistent {
		here, _ := a.cluster.Owner(id)
		return here
	}
	return a.leader.get(ctx, a.cluster.node.IsLeader)
}

// countDelivery returns the trigger.Options.OnDelivery that counts
// deliveries in the metrics.
func (a *agent) countDelivery() func(string, trigger.Delivery) {
	counter := a.metrics.Deliveries()
	return func(id string, d trigger.Delivery) { counter.Add(id, d.Kind, d.Result()) }
}

// closeTriggers stops the schedules and the deliveries of events (those
// in progress are cancelled) before the VMs stop.
func (a *agent) closeTriggers() {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := a.triggers.Close(ctx); err != nil {
		a.log.Warn("stopping", "err", err)
	}
}

// leaderCache keeps the answer of IsLeader for a second: every schedule
// of every program asks at each of its times, and one question costs a
// connection to the local dqlite node.
type leaderCache struct {
	mu     sync.Mutex
	at     time.Time
	leader bool
}

// get returns the last answer of ask if it is less than a second old,
// else asks again.
func (c *leaderCache) get(ctx context.Context, ask func(context.Context) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) >= time.Second {
		c.leader, c.at = ask(ctx), time.Now()
	}
	return c.leader
}
