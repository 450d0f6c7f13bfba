// Package app defines how init runs the user's program and hands it
// request streams. The ASGI worker pool and the executable relay implement
// App; Process is the common part that starts and stops the program.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/guest/config"
	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// App serves the request streams of a configured program.
type App interface {
	// Serve handles one stream; it returns when the stream is finished.
	Serve(ctx context.Context, st *mux.Stream)
	// Stop stops the program, gracefully within ctx, then by force.
	Stop(ctx context.Context) error
}

// Factory starts an App for a configuration.
type Factory func(ctx context.Context, c *config.Config, codeDir string) (App, error)

// Env returns the program's environment: a minimal base, the configured
// variables, and PORT for executables.
func Env(c *config.Config) []string {
	env := map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME": "/root",
		"LANG": "C.UTF-8",
	}
	for k, v := range c.Env {
		env[k] = v
	}
	if c.Interface == config.InterfaceExecutable {
		port := c.Port
		if port == 0 {
			port = 8080
		}
		env["PORT"] = strconv.Itoa(port)
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}

// Process is a running program started through the reaper.
type Process struct {
	cmd  *exec.Cmd
	exit <-chan reaper.Exit
	done chan struct{}
	last reaper.Exit
	log  *slog.Logger
}

// StartProcess starts argv in dir with env, its output on init's
// stdout/stderr (captured line by line once the app runners take over).
func StartProcess(r *reaper.Reaper, log *slog.Logger, dir string, env []string, argv ...string) (*Process, error) {
	prog := argv[0]
	if !filepath.IsAbs(prog) {
		prog = filepath.Join(dir, prog) // relative to the code, never looked up in PATH
	}
	cmd := exec.Command(prog, argv[1:]...)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// Its own process group, so stopping it reaches its children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	exit, err := r.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p := &Process{cmd: cmd, exit: exit, done: make(chan struct{}), log: log}
	go func() {
		p.last = <-exit
		log.Info("program exited", "status", p.last.String())
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM to the process group, waits until ctx ends, then
// sends SIGKILL.
func (p *Process) Stop(ctx context.Context) error {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
		return errors.New("program did not stop in time and was killed")
	case <-time.After(5 * time.Second):
		return errors.New("program survived SIGKILL")
	}
}

// Executable runs an executable program. Relaying streams to it over HTTP
// arrives with the executable interface; until then streams are refused
// with UNAVAILABLE and the program is reachable on its own network address.
type Executable struct {
	*Process
}

// Serve refuses the stream: see the type comment.
func (e *Executable) Serve(_ context.Context, st *mux.Stream) {
	st.Reset(frame.CodeUnavailable, "relaying requests to executables is not implemented yet")
}

// NewExecutableFactory returns a Factory for executable programs.
func NewExecutableFactory(r *reaper.Reaper, log *slog.Logger) Factory {
	return func(ctx context.Context, c *config.Config, codeDir string) (App, error) {
		p, err := StartProcess(r, log, codeDir, Env(c), c.Entrypoint)
		if err != nil {
			return nil, err
		}
		return &Executable{Process: p}, nil
	}
}
