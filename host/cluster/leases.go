package cluster

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"time"
)

// How persistent programs run exactly once:
//
// Every node bumps its heartbeat counter (nodes.beat) every tenth of the
// lease and, in the same transaction, reads which programs are assigned
// to it and their fencing tokens (Heartbeat). It may run those programs
// until its lease runs out: the lease period after the start of its last
// successful heartbeat, less a fifth for safety, measured on its own
// monotonic clock. A node that cannot renew in time stops them.
//
// The leader places programs (Scheduler). It watches each node's counter
// on its own monotonic clock: a node whose counter has not moved for a
// whole lease period is dead, and only then are its programs given to
// another node, with their token raised by one. Since the owner's lease
// started before its last counter change was committed, and the leader
// saw that change no earlier than the commit, the new owner starts after
// the old one had to stop: no two copies run at once, whatever the two
// machines' clocks say. A new leader starts watching afresh, so it too
// waits a whole lease before declaring a node dead.
//
// The token goes to the program; the store refuses key-value writes made
// with a token that is no longer the program's (KVPut).

// Lease is what a node may run: the result of a heartbeat.
type Lease struct {
	// Owned maps the persistent programs assigned to this node to their
	// fencing tokens.
	Owned map[string]int64
	// Until is when the node must have stopped them unless it renewed
	// (a time with a monotonic reading).
	Until time.Time
}

// Valid reports whether the lease still holds at now.
func (l Lease) Valid(now time.Time) bool { return now.Before(l.Until) }

// Heartbeat renews this node's lease: it bumps the node's counter and
// reads its assignments in one transaction.
func (n *Node) Heartbeat(ctx context.Context) (Lease, error) {
	start := time.Now()
	l := Lease{Owned: map[string]int64{}}
	err := n.tx(ctx, func(tx *sql.Tx) error {
		clear(l.Owned)
		res, err := tx.Exec(`UPDATE nodes SET beat = beat + 1 WHERE name = ? AND address = ?`, n.opt.Name, n.opt.Address)
		if err != nil {
			return err
		}
		if count, _ := res.RowsAffected(); count == 0 {
			return fmt.Errorf("this node (%s) is not registered any more", n.opt.Name)
		}
		rows, err := tx.Query(`SELECT program, token FROM assignments WHERE node = ?`, n.opt.Name)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var token int64
			if err := rows.Scan(&id, &token); err != nil {
				return err
			}
			l.Owned[id] = token
		}
		return rows.Err()
	})
	if err != nil {
		return Lease{}, fmt.Errorf("cluster: heartbeat: %w", err)
	}
	l.Until = start.Add(n.opt.Lease - n.opt.Lease/5)
	return l, nil
}

// Want is a persistent program to place, with the resources it needs.
type Want struct {
	ID        string
	VCPUs     int
	MemoryMiB int
}

// Assignment is where a persistent program runs.
type Assignment struct {
	Program string `json:"program"`
	Node    string `json:"node"` // empty: not placed
	Token   int64  `json:"token"`
	// Problem says why the program is not placed, when it is not.
	Problem string `json:"problem,omitempty"`
}

// Scheduler watches the nodes' heartbeats and places persistent programs:
// the leader steps it (Step), the others only observe (Observe). A step by
// a node that lost the leadership does no harm: its writes are
// compare-and-swaps on what it read.
type Scheduler struct {
	n    *Node
	mu   sync.Mutex
	seen map[string]observed // node name -> its counter as last seen changing
}

type observed struct {
	beat int64
	at   time.Time // monotonic: when the counter was seen to change
}

// NewScheduler returns a scheduler that has observed nothing yet.
func (n *Node) NewScheduler() *Scheduler {
	return &Scheduler{n: n, seen: map[string]observed{}}
}

// Observe reads the nodes' heartbeat counters and notes, on this node's
// monotonic clock, when each was last seen to change. Every node observes
// (so that its status can say how long ago each node renewed); only the
// leader places. A node is dead once two readings a whole lease apart
// found its committed counter unchanged, whoever made them.
func (s *Scheduler) Observe(ctx context.Context) error {
	nodes, _, err := s.read(ctx)
	if err != nil {
		return err
	}
	s.observe(nodes, time.Now())
	return nil
}

func (s *Scheduler) observe(nodes []NodeInfo, now time.Time) map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	alive := map[string]bool{}
	for _, nd := range nodes {
		o, ok := s.seen[nd.Name]
		if !ok || o.beat != nd.Beat {
			o = observed{beat: nd.Beat, at: now}
			s.seen[nd.Name] = o
		}
		alive[nd.Name] = now.Sub(o.at) <= s.n.opt.Lease
	}
	return alive
}

// silentFor returns how long a node's counter has been seen standing
// still, starting to watch it now if it was never seen.
func (s *Scheduler) silentFor(name string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.seen[name]
	if !ok {
		o = observed{beat: -1, at: now}
		s.seen[name] = o
	}
	return now.Sub(o.at)
}

// beatSeen returns a node's counter as last read (-1: never read).
func (s *Scheduler) beatSeen(name string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o, ok := s.seen[name]; ok {
		return o.beat
	}
	return -1
}

// Silence returns, for each node observed, how long ago its heartbeat
// counter was last seen to change.
func (s *Scheduler) Silence() map[string]time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]time.Duration{}
	now := time.Now()
	for name, o := range s.seen {
		out[name] = now.Sub(o.at)
	}
	return out
}

// Step observes the nodes' heartbeats and places the wanted programs: a
// program not placed, or on a node dead for a whole lease, goes to the
// live node with the most free memory that fits it; assignments of
// programs no longer wanted are ended. It returns every wanted program's
// assignment.
func (s *Scheduler) Step(ctx context.Context, wanted []Want) ([]Assignment, error) {
	nodes, current, err := s.read(ctx)
	if err != nil {
		return nil, err
	}
	// The clock is read after the read: a counter's change is never timed
	// before the commit it was read from.
	now := time.Now()
	alive := s.observe(nodes, now)
	// A node with assignments but no record (removed from the cluster,
	// maybe still running) is treated like one whose counter stopped when
	// it was last seen, or now: its programs move a whole lease later.
	for _, a := range current {
		if _, known := alive[a.Node]; !known && a.Node != "" {
			alive[a.Node] = s.silentFor(a.Node, now) <= s.n.opt.Lease
		}
	}
	want := map[string]Want{}
	for _, w := range wanted {
		want[w.ID] = w
	}
	// What the live nodes already carry.
	type load struct{ vcpus, mem, programs int }
	loads := map[string]*load{}
	for _, nd := range nodes {
		if alive[nd.Name] {
			loads[nd.Name] = &load{}
		}
	}
	for _, a := range current {
		if w, ok := want[a.Program]; ok && loads[a.Node] != nil {
			l := loads[a.Node]
			l.vcpus, l.mem, l.programs = l.vcpus+w.VCPUs, l.mem+w.MemoryMiB, l.programs+1
		}
	}
	capacity := map[string]Capacity{}
	for _, nd := range nodes {
		capacity[nd.Name] = nd.Capacity
	}
	var out []Assignment
	// Assignments of programs no longer wanted end.
	for _, a := range current {
		if _, ok := want[a.Program]; !ok && a.Node != "" {
			if err := s.move(ctx, a, ""); err != nil {
				return nil, err
			}
		}
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		w := want[id]
		a, placed := current[id]
		if placed && a.Node != "" && alive[a.Node] {
			out = append(out, a)
			continue
		}
		// Place it on the live node with the most free memory that fits.
		target := ""
		for name, l := range loads {
			c := capacity[name]
			// A node that declares no vCPUs bounds memory only.
			if c.VCPUs > 0 && c.VCPUs-l.vcpus < w.VCPUs || c.MemoryMiB-l.mem < w.MemoryMiB {
				continue
			}
			if target == "" {
				target = name
				continue
			}
			t, tc := loads[target], capacity[target]
			if d := cmp.Compare(c.MemoryMiB-l.mem, tc.MemoryMiB-t.mem); d > 0 || d == 0 && (l.programs < t.programs || l.programs == t.programs && name < target) {
				target = name
			}
		}
		if !placed {
			a = Assignment{Program: id}
		}
		if target == "" {
			a.Problem = fmt.Sprintf("no live node has %d vCPU and %d MiB free", w.VCPUs, w.MemoryMiB)
			if a.Node != "" && !alive[a.Node] {
				a.Problem += fmt.Sprintf(" (its node %s is dead)", a.Node)
			}
			out = append(out, a)
			continue
		}
		if err := s.move(ctx, a, target); err != nil {
			return nil, err
		}
		l := loads[target]
		l.vcpus, l.mem, l.programs = l.vcpus+w.VCPUs, l.mem+w.MemoryMiB, l.programs+1
		a.Node, a.Token = target, a.Token+1
		out = append(out, a)
	}
	return out, nil
}

// read returns the nodes and the assignments, by program.
func (s *Scheduler) read(ctx context.Context) ([]NodeInfo, map[string]Assignment, error) {
	var nodes []NodeInfo
	current := map[string]Assignment{}
	err := s.n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		nodes = nil
		clear(current)
		rows, err := db.QueryContext(ctx, `SELECT name, address, vcpus, memory_mib, beat FROM nodes`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var nd NodeInfo
			if err := rows.Scan(&nd.Name, &nd.Address, &nd.Capacity.VCPUs, &nd.Capacity.MemoryMiB, &nd.Beat); err != nil {
				rows.Close()
				return err
			}
			nodes = append(nodes, nd)
		}
		rows.Close()
		all, err := scanAssignments(ctx, db)
		for _, a := range all {
			current[a.Program] = a
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: reading the placement: %w", err)
	}
	return nodes, current, nil
}

// move gives a's program to node (empty: to none) with the next token, if
// the assignment is still what was read.
func (s *Scheduler) move(ctx context.Context, a Assignment, node string) error {
	return s.n.tx(ctx, func(tx *sql.Tx) error {
		if a.Token == 0 {
			_, err := tx.Exec(`INSERT INTO assignments (program, node, token) VALUES (?, ?, 1) ON CONFLICT (program) DO NOTHING`, a.Program, node)
			return err
		}
		token := a.Token
		if node != "" {
			token++
		}
		// Only if the old node's counter is still what was read: an owner
		// that renewed since keeps its program (and its fresh lease).
		_, err := tx.Exec(`UPDATE assignments SET node = ?, token = ? WHERE program = ? AND node = ? AND token = ?
			AND COALESCE((SELECT beat FROM nodes WHERE name = ?), -1) = ?`,
			node, token, a.Program, a.Node, a.Token, a.Node, s.beatSeen(a.Node))
		return err
	})
}

// Assignments returns where each persistent program runs.
func (n *Node) Assignments(ctx context.Context) ([]Assignment, error) {
	var out []Assignment
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		var err error
		out, err = scanAssignments(ctx, db)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: listing assignments: %w", err)
	}
	return out, nil
}

// scanAssignments reads every assignment, by program.
func scanAssignments(ctx context.Context, db *sql.DB) ([]Assignment, error) {
	rows, err := db.QueryContext(ctx, `SELECT program, node, token FROM assignments ORDER BY program`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Assignment
	for rows.Next() {
		var a Assignment
		if err := rows.Scan(&a.Program, &a.Node, &a.Token); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}
