// Package sandbox is the backend that runs init as PID 1 of fresh PID,
// mount, UTS, IPC and network namespaces: no VM, the same contract. The
// transport is a unix socket pair inherited as fd 3 (ferry.transport=fd:3).
// Without root it falls back to running init as a plain child process (it
// then mounts nothing and configures no network) and says so.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/config"
	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/hostnet"
)

// DefaultStateDir holds the per-VM directories of the sandbox (the
// read-only bind mounts of code). It must not be under a path init covers
// with its own mounts (/tmp, /run, /dev, /proc, /sys).
const DefaultStateDir = "/var/lib/ferry/sandbox"

// Backend is the sandbox backend.
type Backend struct {
	// Root says whether namespaces are used; New sets it from the
	// effective uid.
	Root bool
	// StateDir is where per-VM directories are made (DefaultStateDir).
	StateDir string

	seq atomic.Uint64
}

// New returns the backend, in namespace mode when running as root.
func New(log *slog.Logger) *Backend {
	b := &Backend{Root: os.Geteuid() == 0, StateDir: DefaultStateDir}
	if !b.Root && log != nil {
		log.Warn("not root: the sandbox backend runs init as a plain child process, without namespaces, mounts or network")
	}
	return b
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return "sandbox" }

type vm struct {
	cmd     *exec.Cmd
	conn    net.Conn
	done    chan struct{}
	err     error
	code    string
	once    sync.Once
	cleanup func()
	network *backend.Network
}

// Start implements backend.Backend.
func (b *Backend) Start(ctx context.Context, spec backend.Spec) (backend.VM, error) {
	if spec.InitPath == "" {
		return nil, errors.New("sandbox: no init binary")
	}
	if len(spec.Volumes) > 0 {
		return nil, fmt.Errorf("sandbox: this backend provides no volumes (the program declares %d); use the qemu backend", len(spec.Volumes))
	}
	if _, err := os.Stat(spec.InitPath); err != nil {
		return nil, fmt.Errorf("sandbox: init binary: %w", err)
	}
	v := &vm{done: make(chan struct{}), code: spec.CodeDir, cleanup: func() {}}
	index := b.seq.Add(1) // names this VM's directory and network
	if b.Root {
		// The code is seen by init through a read-only bind mount outside
		// the paths init mounts over.
		dir := filepath.Join(b.StateDir, fmt.Sprintf("%s-%d-%d", safeName(spec.ProgramID), os.Getpid(), index))
		code := filepath.Join(dir, "code")
		if err := os.MkdirAll(code, 0o755); err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		if err := bindReadOnly(spec.CodeDir, code); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("sandbox: code directory: %w", err)
		}
		v.code = code
		v.cleanup = func() {
			unix.Unmount(code, unix.MNT_DETACH)
			os.RemoveAll(dir)
		}
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		v.cleanup()
		return nil, fmt.Errorf("sandbox: socket pair: %w", err)
	}
	hostEnd, guestEnd := os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "guest")
	defer guestEnd.Close()
	cmdline := "ferry.transport=fd:3"
	cmd := exec.Command(spec.InitPath, "-cmdline", cmdline)
	if !b.Root {
		cmd = exec.Command(spec.InitPath, "-transport", "fd:3")
	}
	cmd.ExtraFiles = []*os.File{guestEnd}
	cmd.Dir = "/"
	var console io.Writer = io.Discard
	if spec.Log != nil {
		console = &backend.LineWriter{Line: func(line string) { spec.Log.Debug("console", "line", line) }}
	}
	cmd.Stdout, cmd.Stderr = console, console
	if b.Root {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET}
	}
	v.cmd = cmd
	err = backend.StartPinned(cmd, func(err error) {
		v.err = err
		v.cleanup()
		close(v.done)
	})
	if err != nil {
		hostEnd.Close()
		v.cleanup()
		return nil, fmt.Errorf("sandbox: starting init: %w", err)
	}
	conn, err := net.FileConn(hostEnd)
	hostEnd.Close()
	if err != nil {
		v.Kill()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	v.conn = conn
	if spec.Network {
		if !b.Root {
			if spec.Log != nil {
				spec.Log.Warn("sandbox: networking needs root; the program runs without its own network")
			}
		} else {
			nw, link, err := hostnet.Veth(index, cmd.Process.Pid)
			if err != nil {
				v.Kill()
				conn.Close()
				return nil, fmt.Errorf("sandbox: %w", err)
			}
			v.network = nw
			go func() { <-v.done; hostnet.Remove(link) }()
		}
	}
	return v, nil
}

func (v *vm) Conn() io.ReadWriteCloser { return v.conn }
func (v *vm) Guest() backend.Guest {
	return backend.Guest{Code: config.Code{Encoding: config.EncodingDirectory, Source: config.Source{Path: v.code}}}
}
func (v *vm) Network() *backend.Network { return v.network }
func (v *vm) Done() <-chan struct{}     { return v.done }
func (v *vm) Err() error {
	select {
	case <-v.done:
		return v.err
	default:
		return nil
	}
}
func (v *vm) Kill() {
	v.once.Do(func() {
		if v.cmd.Process != nil {
			v.cmd.Process.Kill()
		}
	})
}
func (v *vm) Describe() string {
	if v.cmd.Process == nil {
		return "sandbox"
	}
	return fmt.Sprintf("sandbox pid %d", v.cmd.Process.Pid)
}

// bindReadOnly bind-mounts src onto dst, read-only.
func bindReadOnly(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(dst, unix.MNT_DETACH)
		return err
	}
	return nil
}

// safeName keeps letters, digits, '-' and '_' of a program id for a path.
func safeName(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || len(b) > 64 {
		return "program"
	}
	return string(b)
}
