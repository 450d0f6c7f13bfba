package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat; it
// is 100 on every Linux architecture Ferry runs on.
const clockTicks = 100

// procInfo is what /proc says about one process.
type procInfo struct {
	PID      int
	PPID     int
	Name     string // comm
	CPUTicks uint64 // utime + stime, in clockTicks
}

// readProc reads /proc/PID/stat.
func readProc(pid int) (procInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, err
	}
	return parseStat(pid, b)
}

// parseStat parses the contents of /proc/PID/stat. The command name is in
// parentheses and may itself contain spaces and parentheses, so the fields
// are counted from the last ')'.
func parseStat(pid int, b []byte) (procInfo, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procInfo{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(b[end+1:]))
	// fields[0] is the state (field 3); ppid is field 4, utime 14, stime 15.
	if len(fields) < 13 {
		return procInfo{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	ppid, err1 := strconv.Atoi(fields[1])
	utime, err2 := strconv.ParseUint(fields[11], 10, 64)
	stime, err3 := strconv.ParseUint(fields[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procInfo{}, fmt.Errorf("/proc/%d/stat: bad numbers", pid)
	}
	return procInfo{PID: pid, PPID: ppid, Name: string(b[open+1 : end]), CPUTicks: utime + stime}, nil
}

// rssKiB returns VmRSS and its anonymous part RssAnon (the rest is pages
// of mapped files, mostly the program's own binary) from /proc/PID/status,
// in KiB.
func rssKiB(pid int) (rss, anon int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	if rss, err = statusField(b, "VmRSS"); err != nil {
		return 0, 0, err
	}
	anon, _ = statusField(b, "RssAnon")
	return rss, anon, nil
}

// statusField returns a "Name:  N kB" field of /proc/PID/status.
func statusField(b []byte, name string) (int64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, name+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no %s in status", name)
}

// processTree returns roots and all their descendants that are alive.
func processTree(roots ...int) []procInfo {
	entries, _ := filepath.Glob("/proc/[0-9]*")
	children := map[int][]procInfo{}
	byPID := map[int]procInfo{}
	for _, e := range entries {
		pid, err := strconv.Atoi(filepath.Base(e))
		if err != nil {
			continue
		}
		p, err := readProc(pid)
		if err != nil {
			continue
		}
		byPID[pid] = p
		children[p.PPID] = append(children[p.PPID], p)
	}
	var out []procInfo
	seen := map[int]bool{}
	queue := []int{}
	for _, r := range roots {
		if p, ok := byPID[r]; ok && !seen[r] {
			seen[r] = true
			out = append(out, p)
			queue = append(queue, r)
		}
	}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !seen[c.PID] {
				seen[c.PID] = true
				out = append(out, c)
				queue = append(queue, c.PID)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// ProcMemory is one process's resident memory over a measured run.
type ProcMemory struct {
	Name     string
	PID      int
	StartKiB int64 // when the run began
	PeakKiB  int64 // the largest value sampled during the run
	// PeakAnonKiB is the largest anonymous part (heap, stacks) sampled.
	PeakAnonKiB int64
}

// usage samples a process tree during one run: CPU time used and the
// resident memory of every process. The tree is walked in /proc when the
// run starts and when it ends; in between, only its processes are read.
type usage struct {
	roots []int
	stop  chan struct{}
	done  chan struct{}

	mu       sync.Mutex
	pids     []int // the processes of the tree, in the order first seen
	started  bool  // the first record (the start of the run) is done
	startCPU map[int]uint64
	lastCPU  map[int]uint64
	names    map[int]string // comm, as first seen
	mem      map[int]*ProcMemory
}

// sampleEvery is how often memory is sampled during a run.
const sampleEvery = 50 * time.Millisecond

func startUsage(roots ...int) *usage {
	u := &usage{roots: roots, stop: make(chan struct{}), done: make(chan struct{}),
		startCPU: map[int]uint64{}, lastCPU: map[int]uint64{}, names: map[int]string{}, mem: map[int]*ProcMemory{}}
	u.record(processTree(roots...))
	go func() {
		defer close(u.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			select {
			case <-u.stop:
				return
			case <-t.C:
				u.record(u.known())
			}
		}
	}()
	return u
}

// known reads the processes of the tree walked so far that still exist.
func (u *usage) known() []procInfo {
	u.mu.Lock()
	pids := slices.Clone(u.pids)
	u.mu.Unlock()
	var out []procInfo
	for _, pid := range pids {
		if p, err := readProc(pid); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// record notes the CPU time and the memory of procs; a process seen for
// the first time starts its CPU count here (or from zero at the end of
// the run: it was born during it).
func (u *usage) record(procs []procInfo) {
	u.mu.Lock()
	defer u.mu.Unlock()
	first := !u.started
	u.started = true
	for _, p := range procs {
		if _, seen := u.lastCPU[p.PID]; !seen {
			u.pids = append(u.pids, p.PID)
			u.names[p.PID] = p.Name
			if first {
				u.startCPU[p.PID] = p.CPUTicks
			}
		}
		u.lastCPU[p.PID] = p.CPUTicks
		rss, anon, err := rssKiB(p.PID)
		if err != nil {
			continue
		}
		m := u.mem[p.PID]
		if m == nil {
			m = &ProcMemory{Name: p.Name, PID: p.PID, StartKiB: rss}
			u.mem[p.PID] = m
		}
		m.PeakKiB = max(m.PeakKiB, rss)
		m.PeakAnonKiB = max(m.PeakAnonKiB, anon)
	}
}

// finish stops sampling and returns the CPU seconds the tree used during
// the run, the same split by process name (init's share of B: the
// utime+stime of the sandbox's PID 1 before and after) and every process's
// memory.
func (u *usage) finish() (cpuSeconds float64, byName map[string]float64, mem []ProcMemory) {
	close(u.stop)
	<-u.done
	u.record(processTree(u.roots...))
	u.mu.Lock()
	defer u.mu.Unlock()
	var ticks uint64
	byName = map[string]float64{}
	for pid, last := range u.lastCPU {
		ticks += last - u.startCPU[pid]
		byName[u.names[pid]] += float64(last-u.startCPU[pid]) / clockTicks
	}
	for _, m := range u.mem {
		mem = append(mem, *m)
	}
	sort.Slice(mem, func(i, j int) bool { return mem[i].PID < mem[j].PID })
	return float64(ticks) / clockTicks, byName, mem
}
