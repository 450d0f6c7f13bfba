// Package cgroup puts a VM's processes under resource limits (memory,
// CPU, number of processes) with the kernel's control groups, on cgroup
// v2 hosts and on v1 (or hybrid) hosts alike, through containerd's cgroups
// library. Each VM gets its own group under one parent named after the
// agent; Sweep removes the groups a dead agent left behind.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Parent is the group under which every VM's group is made.
const Parent = "ferry"

// cpuPeriod is the CFS period the CPU quota is expressed in (100 ms, the
// kernel's default).
const cpuPeriod = 100_000

// Limits are the resources one VM may use. A zero field is no limit.
type Limits struct {
	MemoryBytes int64   // memory, page cache included; the kernel OOM-kills inside the group beyond it
	CPUs        float64 // CPU time, in CPUs (1.5: one and a half CPUs' worth per period)
	Pids        int64   // processes and threads
}

// Group is one VM's control group.
type Group struct {
	name string
	v1   cgroup1.Cgroup
	v2   *cgroup2.Manager
}

// v1Controllers are the v1 hierarchies a group is made in.
var v1Controllers = map[cgroup1.Name]bool{cgroup1.Memory: true, cgroup1.Cpu: true, cgroup1.Pids: true}

// Available reports whether this host has cgroups the library can use.
func Available() bool { return cgroups.Mode() != cgroups.Unavailable }

// New makes the group Parent/name with limits.
func New(name string, limits Limits) (*Group, error) {
	if strings.ContainsAny(name, "/\x00") || name == "" || name == "." || name == ".." {
		return nil, fmt.Errorf("cgroup: bad group name %q", name)
	}
	path := "/" + Parent + "/" + name
	g := &Group{name: name}
	switch cgroups.Mode() {
	case cgroups.Unavailable:
		return nil, errors.New("cgroup: no cgroup filesystem on this host")
	case cgroups.Unified:
		res := &cgroup2.Resources{}
		if limits.MemoryBytes > 0 {
			res.Memory = &cgroup2.Memory{Max: &limits.MemoryBytes}
		}
		if limits.CPUs > 0 {
			quota, period := int64(limits.CPUs*cpuPeriod), uint64(cpuPeriod)
			res.CPU = &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)}
		}
		if limits.Pids > 0 {
			res.Pids = &cgroup2.Pids{Max: limits.Pids}
		}
		m, err := cgroup2.NewManager("/sys/fs/cgroup", path, res)
		if err != nil {
			return nil, fmt.Errorf("cgroup v2 %s: %w", path, err)
		}
		g.v2 = m
	default: // v1 controllers, possibly with an empty v2 hierarchy beside them
		res := &specs.LinuxResources{}
		if limits.MemoryBytes > 0 {
			res.Memory = &specs.LinuxMemory{Limit: &limits.MemoryBytes}
		}
		if limits.CPUs > 0 {
			quota, period := int64(limits.CPUs*cpuPeriod), uint64(cpuPeriod)
			res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
		}
		if limits.Pids > 0 {
			res.Pids = &specs.LinuxPids{Limit: &limits.Pids}
		}
		c, err := cgroup1.New(cgroup1.StaticPath(path), res, cgroup1.WithHierarchy(v1Hierarchy))
		if err != nil {
			return nil, fmt.Errorf("cgroup v1 %s: %w", path, err)
		}
		g.v1 = c
	}
	return g, nil
}

// v1Hierarchy is the library's default set of v1 hierarchies, narrowed to
// the controllers Ferry sets.
func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	var wanted []cgroup1.Subsystem
	for _, s := range all {
		if v1Controllers[s.Name()] {
			wanted = append(wanted, s)
		}
	}
	if len(wanted) == 0 {
		return nil, errors.New("none of the memory, cpu and pids controllers is mounted")
	}
	return wanted, nil
}

// Name is the group's name under Parent.
func (g *Group) Name() string { return g.name }

// Add moves the process pid (and the children it will have) into the group.
func (g *Group) Add(pid int) error {
	var err error
	if g.v2 != nil {
		err = g.v2.AddProc(uint64(pid))
	} else {
		err = g.v1.AddProc(uint64(pid))
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: adding pid %d: %w", g.name, pid, err)
	}
	return nil
}

// OOMKills returns how many processes of the group the kernel killed for
// exceeding the memory limit.
func (g *Group) OOMKills() (uint64, error) {
	if g.v2 != nil {
		st, err := g.v2.Stat()
		if err != nil {
			return 0, err
		}
		return st.GetMemoryEvents().GetOomKill(), nil
	}
	st, err := g.v1.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return 0, err
	}
	return st.GetMemoryOomControl().GetOomKill(), nil
}

// Delete removes the group; it must hold no process any more.
func (g *Group) Delete() error {
	var err error
	if g.v2 != nil {
		err = g.v2.Delete()
	} else {
		err = g.v1.Delete()
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", g.name, err)
	}
	removeEmptyParents()
	return nil
}

// removeEmptyParents removes Parent where it holds no group any more, so
// that the host is left as it was once the last VM is gone (the kernel
// refuses while another agent's groups are in it).
func removeEmptyParents() {
	for _, dir := range parentDirs() {
		os.Remove(dir)
	}
}

// Sweep removes the groups under Parent for which stale reports true (an
// agent that died leaves its groups behind, empty once the kernel has
// ended their processes). Groups that still hold processes are left.
func Sweep(stale func(name string) bool) error {
	var errs []error
	for _, dir := range parentDirs() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || !stale(e.Name()) {
				continue
			}
			// A group's directory is removed with rmdir (its files are the
			// kernel's); the kernel refuses while processes remain.
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("cgroup: removing stale %s: %w", filepath.Join(dir, e.Name()), err))
			}
		}
	}
	removeEmptyParents()
	return errors.Join(errs...)
}

// parentDirs are the directories of Parent in every hierarchy in use.
func parentDirs() []string {
	if cgroups.Mode() == cgroups.Unified {
		return []string{filepath.Join("/sys/fs/cgroup", Parent)}
	}
	subsystems, err := v1Hierarchy()
	if err != nil {
		return nil
	}
	var dirs []string
	for _, s := range subsystems {
		if p, ok := s.(interface{ Path(string) string }); ok {
			dirs = append(dirs, p.Path("/"+Parent))
		}
	}
	return dirs
}
