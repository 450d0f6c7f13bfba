// Package reaper makes init the single owner of wait4: it reaps every
// child — the ones init starts and the orphans the kernel re-parents to it
// — and hands each started child's exit status to whoever started it.
//
// os/exec's Wait cannot be used alongside a wait4(-1) loop: whichever runs
// first steals the other's status. So processes init runs are started
// through Reaper.Start, which registers the pid before the reaper can see
// it exit, and waited for through the returned channel.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exit is how a process ended.
type Exit struct {
	Pid    int
	Status unix.WaitStatus
}

// Code is the exit code, or 128+signal for a killed process.
func (e Exit) Code() int {
	if e.Status.Signaled() {
		return 128 + int(e.Status.Signal())
	}
	return e.Status.ExitStatus()
}

func (e Exit) String() string {
	if e.Status.Signaled() {
		// "killed by signal 9 (killed)": the number for the reader who
		// knows signals, the kernel's description for who does not.
		return fmt.Sprintf("pid %d killed by signal %d (%s)", e.Pid, int(e.Status.Signal()), e.Status.Signal())
	}
	return fmt.Sprintf("pid %d exited with status %d", e.Pid, e.Status.ExitStatus())
}

// Reaper reaps children. Create one per process with New and run it.
type Reaper struct {
	log *slog.Logger

	mu      sync.Mutex // held across Start and each reaping pass
	waiters map[int]chan Exit
	orphans int // orphans reaped, for tests and metrics
	sigs    chan os.Signal
}

// New makes the calling process a child subreaper (so orphans of its
// descendants come back to it even when it is not PID 1) and starts
// listening for SIGCHLD. Call Run to reap.
func New(log *slog.Logger) (*Reaper, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("reaper: becoming child subreaper: %w", err)
	}
	r := &Reaper{log: log, waiters: map[int]chan Exit{}, sigs: make(chan os.Signal, 64)}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	return r, nil
}

// Run reaps until ctx ends.
func (r *Reaper) Run(ctx context.Context) {
	defer signal.Stop(r.sigs)
	r.reap() // children that exited before Run
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.sigs:
			r.reap()
		}
	}
}

// reap collects every exited child.
func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if !ws.Exited() && !ws.Signaled() {
			continue // stopped or continued, not gone
		}
		exit := Exit{Pid: pid, Status: ws}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- exit // buffered
			continue
		}
		r.orphans++
		r.log.Debug("reaped orphan", "pid", pid, "status", exit.String())
	}
}

// Start starts cmd (which must not be waited for with cmd.Wait) and returns
// a channel that receives its exit. cmd's Stdin/Stdout/Stderr should be
// *os.File values (or nil): with other readers or writers os/exec starts
// copying goroutines that only cmd.Wait would finish.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan Exit, 1)
	r.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

// Orphans returns how many processes init did not start were reaped.
func (r *Reaper) Orphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

// KillAll sends sig to every process in the system but init itself (used
// at shutdown, when init is PID 1 of its namespace).
func KillAll(sig syscall.Signal) error {
	return unix.Kill(-1, sig)
}
