package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/guest/reaper"
)

// ProcessSpec describes a program process to start.
type ProcessSpec struct {
	Argv       []string // Argv[0] is absolute or relative to Dir (never looked up in PATH)
	Dir        string
	Env        []string
	ExtraFiles []*os.File // become fds 3, 4, …
	Output     Output     // receives stdout and stderr lines; nil: init's own stdout/stderr
	Origin     int        // passed to Output
}

// Process is a running program started through the reaper.
type Process struct {
	cmd      *exec.Cmd
	done     chan struct{}
	last     reaper.Exit
	captured sync.WaitGroup // output readers; done before Done closes
}

// StartProcess starts a process in its own process group (so stopping it
// reaches its children too) and reaps it through r.
func StartProcess(r *reaper.Reaper, log *slog.Logger, spec ProcessSpec) (*Process, error) {
	prog := spec.Argv[0]
	if !filepath.IsAbs(prog) {
		prog = filepath.Join(spec.Dir, prog)
	}
	cmd := exec.Command(prog, spec.Argv[1:]...)
	cmd.Dir, cmd.Env, cmd.ExtraFiles = spec.Dir, spec.Env, spec.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	var readers []*os.File
	if spec.Output == nil {
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	} else {
		// Our own pipes rather than exec's: the reaper, not cmd.Wait, collects
		// the process, so exec's copying goroutines would never be waited for.
		var writers []*os.File
		for range 2 {
			pr, pw, err := os.Pipe()
			if err != nil {
				closeAll(readers, writers)
				return nil, fmt.Errorf("output pipe: %w", err)
			}
			readers, writers = append(readers, pr), append(writers, pw)
		}
		cmd.Stdout, cmd.Stderr = writers[0], writers[1]
		defer closeAll(nil, writers) // the child has its copies
	}
	exit, err := r.Start(cmd)
	if err != nil {
		closeAll(readers, nil)
		return nil, fmt.Errorf("starting %s: %w", spec.Argv[0], err)
	}
	for i, src := range readers {
		p.captured.Add(1)
		go func() {
			defer p.captured.Done()
			defer src.Close()
			captureLines(src, [2]string{"stdout", "stderr"}[i], spec.Origin, spec.Output)
		}()
	}
	go func() {
		p.last = <-exit
		// Output written just before exiting is delivered before Done, unless
		// a grandchild keeps the pipes open.
		waitTimeout(&p.captured, time.Second)
		log.Info("program process exited", "argv0", spec.Argv[0], "origin", spec.Origin, "status", p.last.String())
		close(p.done)
	}()
	return p, nil
}

func closeAll(a, b []*os.File) {
	for _, f := range append(a, b...) {
		f.Close()
	}
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit returns how the process ended; valid after Done is closed.
func (p *Process) Exit() reaper.Exit { return p.last }

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop sends SIGTERM to the process group, waits until ctx ends, then
// sends SIGKILL.
func (p *Process) Stop(ctx context.Context) error {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	}
	_ = p.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return errors.New("program did not stop in time and was killed")
	case <-time.After(5 * time.Second):
		return errors.New("program survived SIGKILL")
	}
}
