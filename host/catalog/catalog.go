// Package catalog keeps an agent's deployed programs in step with the
// cluster: the configuration file's programs are stored at start, deploys
// and deletes through the admin API go to the cluster first, and a poll of
// the cluster's revision applies every change, made here or on another
// node, to the local set of programs the front routes to.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/manifest"
)

// PollInterval is how often a node looks for changes made elsewhere: a
// deploy on any node is served by all within about this long.
const PollInterval = 500 * time.Millisecond

// DefaultMemoryMiB is a persistent program's memory when its manifest
// names none, for placing it (the backends' own default).
const DefaultMemoryMiB = 512

// Catalog is the bridge between the cluster's programs and the front's.
type Catalog struct {
	Node     *cluster.Node
	Programs *front.Programs
	Log      *slog.Logger
	// Changed, when set, is told of every program this node redeployed
	// or deleted (so that the copy of a persistent program it runs
	// restarts as the program now is). Set before LoadFile.
	Changed func(id string)

	mu       sync.Mutex // serialises syncs
	revision int64
	applied  map[string]string // id -> the manifest applied locally (its JSON)
	wanted   []cluster.Want
}

// New returns a catalog; LoadFile and Run start it.
func New(node *cluster.Node, programs *front.Programs, log *slog.Logger) *Catalog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Catalog{Node: node, Programs: programs, Log: log, applied: map[string]string{}}
}

// LoadFile stores the configuration file's programs in the cluster (a
// program of the file replaces one of the same id deployed through the
// API: the operator's file wins at every start) and applies the cluster's
// programs locally. Programs deployed through the API, and those of other
// nodes' files, stay.
func (c *Catalog) LoadFile(ctx context.Context, programs map[string]*manifest.Program) error {
	for _, id := range slices.Sorted(maps.Keys(programs)) {
		doc, err := storable(programs[id])
		if err != nil {
			return fmt.Errorf("program %s: %w", id, err)
		}
		if _, err := c.Node.PutProgram(ctx, id, doc, cluster.SourceFile, true); err != nil {
			return err
		}
	}
	// A program this node cannot apply (another node's, say) is logged:
	// the agent serves the others.
	if err := c.Sync(ctx); err != nil {
		if _, _, rerr := c.Node.Programs(ctx); rerr != nil {
			return err
		}
		c.Log.Warn("catalog: some programs of the cluster are not served here", "err", err)
	}
	return nil
}

// Deploy adds a program to the cluster (ErrExists if its id is taken) and
// applies it here at once; the other nodes apply it at their next poll.
func (c *Catalog) Deploy(ctx context.Context, id string, m *manifest.Program) error {
	if err := manifest.ValidateProgram(id, m); err != nil {
		return err
	}
	if m.Persistent() {
		if err := c.fits(ctx, m); err != nil {
			return err
		}
	}
	doc, err := storable(m)
	if err != nil {
		return err
	}
	if _, err := c.Node.PutProgram(ctx, id, doc, cluster.SourceAPI, false); err != nil {
		if errors.Is(err, cluster.ErrExists) {
			return front.ErrExists
		}
		return err
	}
	return c.Sync(ctx)
}

// fits refuses a persistent program that no node of the cluster could ever
// hold.
func (c *Catalog) fits(ctx context.Context, m *manifest.Program) error {
	nodes, err := c.Node.Nodes(ctx)
	if err != nil {
		return err
	}
	w := want("", m)
	largest := cluster.Capacity{}
	for _, n := range nodes {
		if (n.Capacity.VCPUs == 0 || n.Capacity.VCPUs >= w.VCPUs) && n.Capacity.MemoryMiB >= w.MemoryMiB {
			return nil
		}
		largest.VCPUs, largest.MemoryMiB = max(largest.VCPUs, n.Capacity.VCPUs), max(largest.MemoryMiB, n.Capacity.MemoryMiB)
	}
	return &manifest.FieldError{Field: "resources", Message: fmt.Sprintf(
		"no node of the cluster has %d vCPU and %d MiB for this persistent program (the largest have %d vCPU, %d MiB)",
		w.VCPUs, w.MemoryMiB, largest.VCPUs, largest.MemoryMiB)}
}

// Delete removes a program from the cluster and stops it here; the other
// nodes stop theirs at their next poll.
func (c *Catalog) Delete(ctx context.Context, id string) error {
	if err := c.Node.DeleteProgram(ctx, id); err != nil {
		if errors.Is(err, cluster.ErrNotFound) {
			return front.ErrNotFound
		}
		return err
	}
	return c.Sync(ctx)
}

// Run polls the cluster until ctx ends and applies what changed.
func (c *Catalog) Run(ctx context.Context) {
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rev, err := c.Node.ProgramsRevision(ctx)
		if err != nil {
			c.Log.Debug("catalog: cannot read the cluster's revision", "err", err)
			continue
		}
		c.mu.Lock()
		changed := rev != c.revision
		c.mu.Unlock()
		if changed {
			if err := c.Sync(ctx); err != nil {
				c.Log.Warn("catalog: applying the cluster's programs", "err", err)
			}
		}
	}
}

// Sync applies the cluster's programs to the local set: new ones are
// deployed, changed ones redeployed, removed ones deleted (their VMs
// stopped).
func (c *Catalog) Sync(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	progs, rev, err := c.Node.Programs(ctx)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	var wanted []cluster.Want
	var errs []error
	for _, p := range progs {
		seen[p.ID] = true
		var m manifest.Program
		if err := json.Unmarshal(p.Manifest, &m); err != nil {
			errs = append(errs, fmt.Errorf("program %s: stored manifest: %w", p.ID, err))
			continue
		}
		if m.Persistent() {
			wanted = append(wanted, want(p.ID, &m))
		}
		if c.applied[p.ID] == string(p.Manifest) {
			continue
		}
		if _, ok := c.applied[p.ID]; ok {
			if err := c.Programs.Delete(ctx, p.ID); err != nil && !errors.Is(err, front.ErrNotFound) {
				errs = append(errs, err)
			}
			c.changed(p.ID)
		}
		if err := c.Programs.Deploy(p.ID, &m); err != nil {
			errs = append(errs, fmt.Errorf("program %s: %w", p.ID, err))
			continue
		}
		c.applied[p.ID] = string(p.Manifest)
		c.Log.Info("program deployed", "program", p.ID, "revision", p.Revision, "source", p.Source)
	}
	for id := range c.applied {
		if seen[id] {
			continue
		}
		if err := c.Programs.Delete(ctx, id); err != nil && !errors.Is(err, front.ErrNotFound) {
			errs = append(errs, err)
		}
		delete(c.applied, id)
		c.changed(id)
		c.Log.Info("program deleted", "program", id)
	}
	c.revision, c.wanted = rev, wanted
	return errors.Join(errs...)
}

func (c *Catalog) changed(id string) {
	if c.Changed != nil {
		c.Changed(id)
	}
}

// Wanted returns the persistent programs with their resources, as of the
// last sync (for the placement of persistent programs).
func (c *Catalog) Wanted() []cluster.Want {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.wanted)
}

// storable encodes a manifest for the cluster, checking that it reads
// back: what one node stores, every node must be able to apply.
func storable(m *manifest.Program) ([]byte, error) {
	doc, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	var back manifest.Program
	if err := json.Unmarshal(doc, &back); err != nil {
		return nil, fmt.Errorf("the manifest does not read back from its stored form: %w", err)
	}
	return doc, nil
}

// want is what placing a persistent program takes: its declared vCPUs
// (none when it declares none: the sandbox then sets no CPU quota), and
// its memory (the backends' default when it declares none).
func want(id string, m *manifest.Program) cluster.Want {
	w := cluster.Want{ID: id, VCPUs: max(m.Resources.VCPUs, 0), MemoryMiB: m.Resources.Memory}
	if w.MemoryMiB <= 0 {
		w.MemoryMiB = DefaultMemoryMiB
	}
	return w
}
