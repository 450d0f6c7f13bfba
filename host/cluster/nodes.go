package cluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"

	"github.com/canonical/go-dqlite/client"
)

// ErrNameTaken is a node name another node of the cluster has.
var ErrNameTaken = errors.New("node name already taken")

// NodeInfo is one node as the cluster knows it.
type NodeInfo struct {
	Name     string   `json:"name"`
	Address  string   `json:"address"`
	Capacity Capacity `json:"capacity"`
	// Beat is the node's heartbeat counter: it goes up while the node is
	// alive (compare two readings; clocks are never compared).
	Beat int64 `json:"beat"`
	// Role is the node's dqlite role (voter, stand-by, spare), or "gone"
	// when it is no longer a member.
	Role   string `json:"role"`
	Leader bool   `json:"leader"`
	// IPv6Prefix is the node's routed prefix for its VMs, if it has one.
	IPv6Prefix string `json:"ipv6_prefix,omitempty"`
	// Public is where the node serves programs to the other nodes
	// (host:port of its public HTTP listener; Advertise), empty until
	// it has said.
	Public string `json:"public,omitempty"`
}

// ErrPrefixOverlap is a node's IPv6 prefix that overlaps another node's.
var ErrPrefixOverlap = errors.New("IPv6 prefix overlaps another node's")

// checkPrefix refuses this node's prefix when it overlaps the prefix of
// another node of the cluster.
func (n *Node) checkPrefix(tx *sql.Tx) error {
	mine := n.opt.IPv6Prefix
	if !mine.IsValid() {
		return nil
	}
	rows, err := tx.Query(`SELECT name, ipv6_prefix FROM nodes WHERE name <> ? AND ipv6_prefix <> ''`, n.opt.Name)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name, prefix string
		if err := rows.Scan(&name, &prefix); err != nil {
			return err
		}
		if p, err := netip.ParsePrefix(prefix); err == nil && p.Overlaps(mine) {
			return fmt.Errorf("cluster: %w: %s of node %s contains or is part of %s", ErrPrefixOverlap, p, name, mine)
		}
	}
	return rows.Err()
}

// register records this node, or checks that its name is its own.
func (n *Node) register(ctx context.Context) error {
	return n.tx(ctx, func(tx *sql.Tx) error {
		var addr string
		err := tx.QueryRow(`SELECT address FROM nodes WHERE name = ?`, n.opt.Name).Scan(&addr)
		switch {
		case err == nil && addr != n.opt.Address:
			return fmt.Errorf("cluster: %w: %s is the node at %s", ErrNameTaken, n.opt.Name, addr)
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return err
		}
		var other string
		err = tx.QueryRow(`SELECT name FROM nodes WHERE address = ? AND name <> ?`, n.opt.Address, n.opt.Name).Scan(&other)
		if err == nil {
			return fmt.Errorf("cluster: the node at %s is registered as %s, not %s (its --node-name cannot change)", n.opt.Address, other, n.opt.Name)
		}
		// A node keeps its slot; a new one takes the lowest free.
		err = tx.QueryRow(`SELECT slot FROM nodes WHERE name = ?`, n.opt.Name).Scan(&n.slot)
		if errors.Is(err, sql.ErrNoRows) {
			n.slot, err = freeSlot(tx)
		}
		if err != nil {
			return err
		}
		if n.slot >= MaxSlots {
			return fmt.Errorf("cluster: all %d node slots are taken", MaxSlots)
		}
		if err := n.checkPrefix(tx); err != nil {
			return err
		}
		prefix := ""
		if n.opt.IPv6Prefix.IsValid() {
			prefix = n.opt.IPv6Prefix.String()
		}
		// The public address is forgotten until the node advertises
		// it again: it may have changed.
		_, err = tx.Exec(`INSERT INTO nodes (name, address, slot, vcpus, memory_mib, ipv6_prefix) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET vcpus = excluded.vcpus, memory_mib = excluded.memory_mib, ipv6_prefix = excluded.ipv6_prefix, public = ''`,
			n.opt.Name, n.opt.Address, n.slot, n.opt.Capacity.VCPUs, n.opt.Capacity.MemoryMiB, prefix)
		return err
	})
}

// freeSlot returns the lowest slot no node has.
func freeSlot(tx *sql.Tx) (int, error) {
	rows, err := tx.Query(`SELECT slot FROM nodes`)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	taken := map[int]bool{}
	for rows.Next() {
		var slot int
		if err := rows.Scan(&slot); err != nil {
			return 0, err
		}
		taken[slot] = true
	}
	slot := 0
	for taken[slot] {
		slot++
	}
	return slot, rows.Err()
}

// MaxSlots bounds the nodes of a cluster.
const MaxSlots = 64

// Slot is the node's number in the cluster, unique among its nodes and
// kept across restarts (0 to MaxSlots-1): several agents on one machine
// derive their VMs' host network names, address ranges and uid ranges from
// it so that they never collide.
func (n *Node) Slot() int { return n.slot }

// Advertise records where this node serves programs to the other nodes:
// public, the host:port of its public HTTP listener. A node forwards a
// request for a persistent program that runs elsewhere to that address.
func (n *Node) Advertise(ctx context.Context, public string) error {
	return n.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`UPDATE nodes SET public = ? WHERE name = ?`, public, n.opt.Name)
		return err
	})
}

// PublicAddresses returns where each node that has advertised one serves
// programs (Advertise), by node name.
func (n *Node) PublicAddresses(ctx context.Context) (map[string]string, error) {
	var out map[string]string
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		out = map[string]string{}
		rows, err := db.QueryContext(ctx, `SELECT name, public FROM nodes WHERE public <> ''`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name, public string
			if err := rows.Scan(&name, &public); err != nil {
				return err
			}
			out[name] = public
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: the nodes' public addresses: %w", err)
	}
	return out, nil
}

// Nodes returns the registered nodes with their dqlite roles.
func (n *Node) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var nodes []NodeInfo
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		nodes = nil
		rows, err := db.QueryContext(ctx, `SELECT name, address, vcpus, memory_mib, beat, ipv6_prefix, public FROM nodes ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var ni NodeInfo
			if err := rows.Scan(&ni.Name, &ni.Address, &ni.Capacity.VCPUs, &ni.Capacity.MemoryMiB, &ni.Beat, &ni.IPv6Prefix, &ni.Public); err != nil {
				return err
			}
			nodes = append(nodes, ni)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: listing nodes: %w", err)
	}
	members, err := n.members(ctx)
	if err != nil {
		return nodes, err
	}
	var leader string
	if local, err := n.app.Client(ctx); err == nil {
		if li, err := local.Leader(ctx); err == nil && li != nil {
			leader = li.Address
		}
		local.Close()
	}
	for i := range nodes {
		nodes[i].Role = "gone"
		for _, m := range members {
			if m.Address == nodes[i].Address {
				nodes[i].Role = roleName(m.Role)
			}
		}
		nodes[i].Leader = nodes[i].Address == leader
	}
	return nodes, nil
}

func roleName(r client.NodeRole) string {
	switch r {
	case client.Voter:
		return "voter"
	case client.StandBy:
		return "stand-by"
	case client.Spare:
		return "spare"
	}
	return r.String()
}

// RemoveNode takes a node out of the cluster: its dqlite membership and
// its record. Its persistent programs are placed elsewhere once its lease
// runs out. A node removes itself with its own name before it is retired.
func (n *Node) RemoveNode(ctx context.Context, name string) error {
	var addr string
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		return db.QueryRowContext(ctx, `SELECT address FROM nodes WHERE name = ?`, name).Scan(&addr)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("cluster: no node named %s", name)
	}
	if err != nil {
		return err
	}
	members, err := n.members(ctx)
	if err != nil {
		return err
	}
	for _, m := range members {
		if m.Address != addr {
			continue
		}
		if name == n.opt.Name {
			if err := n.app.Handover(ctx); err != nil {
				return fmt.Errorf("cluster: handing over before leaving: %w", err)
			}
		}
		cli, err := n.leaderClient(ctx)
		if err != nil {
			return err
		}
		err = cli.Remove(ctx, m.ID)
		cli.Close()
		if err != nil {
			return noQuorum(fmt.Errorf("cluster: removing %s from dqlite: %w", name, err))
		}
	}
	return n.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`DELETE FROM nodes WHERE name = ?`, name)
		return err
	})
}
