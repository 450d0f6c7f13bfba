// Package instance is init's side of an instance (the configuration's
// interface "instance", README "Instances"): a VM with no app, which
// users reach over SSH at its own address. init makes the root's SSH
// host keys the first time (an image carries none, and a persistent root
// keeps them), then keeps sshd running: started in the foreground,
// restarted with backoff whenever it exits, stopped with the VM. The
// authorized keys are root's, written by guest/setup like any program's.
package instance

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/app/executable"
	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Defaults: Debian's openssh-server.
const (
	DefaultSSHD   = "/usr/sbin/sshd"
	DefaultKeygen = "/usr/bin/ssh-keygen"
	DefaultPort   = 22
)

// Options configure an instance's services.
type Options struct {
	// SSHD and Keygen are the programs (DefaultSSHD, DefaultKeygen when
	// empty). SSHD gets the arguments -D -e (foreground, logs on stderr,
	// which become the program's output) then SSHDArgs.
	SSHD, Keygen string
	SSHDArgs     []string
	// Root is the prefix of /etc/ssh, where host keys are made, and of
	// /run/sshd, sshd's privilege separation directory ("/" in a VM; a
	// temporary directory in tests).
	Root string
	// Port is where sshd listens (DefaultPort when 0): starting waits
	// until it accepts connections there.
	Port   int
	Env    []string
	Reaper *reaper.Reaper
	Log    *slog.Logger
	Output app.Output
}

// Instance keeps sshd running for an instance; it serves no streams.
type Instance struct {
	sshd *executable.Program
}

// NewFactory returns the app.Factory for interface "instance".
func NewFactory(r *reaper.Reaper, log *slog.Logger) app.Factory {
	return func(ctx context.Context, c *contract.Config, _ string, out app.Output) (app.App, error) {
		return Start(ctx, Options{Root: "/", Env: app.Env(c), Reaper: r, Log: log, Output: out})
	}
}

// Start makes the missing host keys, then starts sshd and waits until it
// accepts connections; every failure is a *contract.ConfigError of phase
// app (an image without sshd says so).
func Start(ctx context.Context, opt Options) (*Instance, error) {
	opt.SSHD, opt.Keygen, opt.Port = cmp.Or(opt.SSHD, DefaultSSHD), cmp.Or(opt.Keygen, DefaultKeygen), cmp.Or(opt.Port, DefaultPort)
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Output == nil {
		opt.Output = app.DiscardOutput{}
	}
	for _, prog := range []string{opt.SSHD, opt.Keygen} {
		if st, err := os.Stat(prog); err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			return nil, contract.NewConfigError(contract.PhaseApp, "interface",
				fmt.Errorf("an instance needs %s, which this image does not have (install openssh-server in it)", prog))
		}
	}
	if err := hostKeys(ctx, opt); err != nil {
		return nil, contract.NewConfigError(contract.PhaseApp, "interface", err)
	}
	// sshd refuses to start without its privilege separation directory,
	// which Debian's service unit makes in /run at each boot.
	if err := os.MkdirAll(filepath.Join(opt.Root, "run/sshd"), 0o755); err != nil {
		return nil, contract.NewConfigError(contract.PhaseApp, "interface", err)
	}
	// executable's supervision is the instance's: restarted after 100 ms,
	// doubling to 10 s while it keeps exiting (internal/supervise).
	sshd, err := executable.Start(ctx, executable.Options{
		Argv: append([]string{opt.SSHD, "-D", "-e"}, opt.SSHDArgs...), Dir: "/", Env: opt.Env, Port: opt.Port,
		Reaper: opt.Reaper, Log: opt.Log, Output: opt.Output,
	})
	if err != nil {
		return nil, err
	}
	opt.Log.Info("instance: sshd is serving", "port", opt.Port)
	return &Instance{sshd: sshd}, nil
}

// hostKeys makes the host keys the root lacks (ssh-keygen -A: one of each
// type sshd uses by default, so that it logs no missing key at each
// start), and leaves the others as they are. Under TCG on a loaded
// machine this was about 4 s of a first boot's 13 s app phase (9 s with
// the keys kept: sshd's own start); the RSA key is most of it.
func hostKeys(ctx context.Context, opt Options) error {
	if err := os.MkdirAll(filepath.Join(opt.Root, "etc/ssh"), 0o755); err != nil {
		return fmt.Errorf("host keys: %w", err)
	}
	p, err := app.StartProcess(opt.Reaper, opt.Log, app.ProcessSpec{Argv: []string{opt.Keygen, "-A", "-f", opt.Root}, Dir: "/", Env: opt.Env, Output: opt.Output})
	if err != nil {
		return fmt.Errorf("host keys: %w", err)
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		_ = p.Stop(context.Background())
		return fmt.Errorf("host keys: %w", ctx.Err())
	}
	if code := p.Exit().Code(); code != 0 {
		return fmt.Errorf("host keys: %s -A failed: %s (its output is in the program's logs)", opt.Keygen, p.Exit())
	}
	return nil
}

// Serve refuses a request stream: an instance has no app. Its services
// are reached at its own address.
func (i *Instance) Serve(_ context.Context, st *mux.Stream) {
	st.Reset(frame.CodeUnavailable, "an instance serves no HTTP through the agent: reach it at its own address (SSH)")
}

// Stop stops sshd, gracefully within ctx, then by force.
func (i *Instance) Stop(ctx context.Context) error { return i.sshd.Stop(ctx) }
