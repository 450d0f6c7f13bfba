package asgi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/app/asgi/forward"
	"github.com/ferry-vm/ferry/internal/supervise"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// worker is one Python process of the pool and its session.
type worker struct {
	pool     *Pool
	id       int
	inflight atomic.Int64
	starts   uint32 // how many times start ran; only start touches it

	mu   sync.Mutex
	sess *mux.Session // nil while down
	proc *app.Process // the current process
}

// workerConfig is the CONFIG document a worker receives.
type workerConfig struct {
	App      string `json:"app"`
	CodeDir  string `json:"code_dir"`
	Packages string `json:"packages,omitempty"`
	Worker   int    `json:"worker"`
	Lifespan string `json:"lifespan"`
}

// start launches the process and configures it; on success the worker
// serves, and its data channel, if the pool has a channel socket, is
// passed to the host. The error carries the worker's traceback when the
// app failed.
func (w *worker) start(ctx context.Context) error {
	p := w.pool
	w.starts++
	ours, theirs, err := socketPair("worker-conn", "worker-end")
	if err != nil {
		return fmt.Errorf("worker %d: %w", w.id, err)
	}
	argv := []string{p.opt.Python, "-u", p.script, "--fd", "3"}
	extra := []*os.File{theirs}
	// The data channel: the worker's end is its fd 4, the host's end
	// travels over the channel socket once the worker is configured.
	var hostEnd *os.File
	if p.opt.Channels != nil {
		var workerEnd *os.File
		if hostEnd, workerEnd, err = socketPair("worker-data", "worker-data-end"); err != nil {
			ours.Close()
			theirs.Close()
			return fmt.Errorf("worker %d: %w", w.id, err)
		}
		defer hostEnd.Close() // init keeps no copy: the channel is the host's and the worker's
		argv = append(argv, "--data-fd", "4")
		extra = append(extra, workerEnd)
	}
	proc, err := app.StartProcess(p.opt.Reaper, p.log, app.ProcessSpec{
		Argv:       argv,
		Dir:        p.opt.CodeDir,
		Env:        p.opt.Env,
		ExtraFiles: extra,
		Output:     p.opt.Output,
		Origin:     w.id,
	})
	for _, f := range extra {
		f.Close()
	}
	if err != nil {
		ours.Close()
		return fmt.Errorf("worker %d: %w", w.id, err)
	}
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		_ = proc.Signal(syscall.SIGKILL)
		return fmt.Errorf("worker %d: %w", w.id, err)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, p.opt.StartTimeout, fmt.Errorf("the app did not start within %s", p.opt.StartTimeout))
	defer cancel()
	// A worker that dies while starting says why (its exit status).
	ctx, exited := context.WithCancelCause(ctx)
	defer exited(nil)
	go func() {
		select {
		case <-proc.Done():
			exited(fmt.Errorf("the worker exited while starting (%s)", proc.Exit().String()))
		case <-ctx.Done():
		}
	}()
	doc := workerConfig{App: p.opt.App, CodeDir: p.opt.CodeDir, Packages: p.opt.Packages, Worker: w.id, Lifespan: "auto"}
	sess, _, err := contract.Configure(ctx, conn, mux.Config{Agent: "ferry-init", Logger: p.log.With("worker", w.id)}, doc)
	if err != nil {
		_ = proc.Signal(syscall.SIGKILL)
		<-proc.Done()
		if _, refused := errors.AsType[*contract.ConfigError](err); refused {
			return err // the app's own failure, with its traceback
		}
		return &contract.ConfigError{Phase: contract.PhaseApp, Field: "entrypoint", Message: fmt.Sprintf("worker %d: %v", w.id, err),
			Detail: p.tail.Recent(w.id), Err: err}
	}
	w.mu.Lock()
	w.sess, w.proc = sess, proc
	w.mu.Unlock()
	p.changed()
	if hostEnd != nil {
		// A channel that cannot be passed leaves the worker served
		// through init only (its data channel ends with our copy).
		ch := contract.WorkerChannel{Worker: uint32(w.id), Start: w.starts}
		if err := p.opt.Channels.Send(ch, hostEnd); err != nil {
			p.log.Warn("cannot pass the worker's data channel to the host; it is served through init", "worker", w.id, "err", err)
		}
	}
	return nil
}

// socketPair returns the two ends of a new stream socket, close-on-exec.
func socketPair(name0, name1 string) (*os.File, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), name0), os.NewFile(uintptr(fds[1]), name1), nil
}

// supervise waits for the running process to exit and restarts it with
// backoff until the pool stops.
func (w *worker) supervise(ctx context.Context) {
	p := w.pool
	// A worker that exits is restarted after 100 ms, doubling up to 5 s
	// while it keeps exiting, from 100 ms again once it has run for 10 s
	// (README "Running the program").
	policy := supervise.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second, ResetAfter: 10 * time.Second}
	supervise.Run(ctx, policy, supervise.Task{
		Running: true, // by Start
		Start: func(ctx context.Context) error {
			if p.stopping.Load() {
				return supervise.ErrStop
			}
			if err := w.start(ctx); err != nil {
				return err
			}
			p.log.Info("ASGI worker restarted", "worker", w.id)
			return nil
		},
		Wait: func(ctx context.Context) error {
			w.mu.Lock()
			proc, sess := w.proc, w.sess
			w.mu.Unlock()
			select {
			case <-proc.Done():
			case <-ctx.Done():
				return ctx.Err()
			}
			w.mu.Lock()
			w.sess = nil
			w.mu.Unlock()
			sess.Close()
			p.changed()
			if p.stopping.Load() {
				return supervise.ErrStop
			}
			return errors.New(proc.Exit().String())
		},
		Ended: func(how error, in time.Duration) {
			p.log.Warn("ASGI worker exited; restarting", "worker", w.id, "status", how.Error(), "in", in)
		},
		Failed: func(err error, in time.Duration) {
			p.log.Error("ASGI worker failed to restart", "worker", w.id, "err", err, "retry_in", in)
		},
	})
}

// current returns the worker's live session and its process; the session
// is nil while the worker is down.
func (w *worker) current() (*mux.Session, *app.Process) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sess, w.proc
}

// lost explains a stream failure caused by the worker going away.
func (w *worker) lost(proc *app.Process) forward.LostFunc {
	return func() (uint32, string) {
		select {
		case <-proc.Done():
			return frame.CodeWorkerLost, fmt.Sprintf("worker %d exited (%s)", w.id, proc.Exit().String())
		case <-time.After(200 * time.Millisecond):
			return frame.CodeWorkerLost, fmt.Sprintf("worker %d closed its connection", w.id)
		}
	}
}

// stop asks the worker to finish (GOAWAY: in-flight requests complete, then
// lifespan shutdown) and kills it when ctx ends first.
func (w *worker) stop(ctx context.Context) error {
	w.mu.Lock()
	proc, sess := w.proc, w.sess
	w.mu.Unlock()
	if proc == nil {
		return nil
	}
	if sess != nil {
		_ = sess.GoAway(frame.CodeNoError, "stopping")
	}
	select {
	case <-proc.Done():
		return nil
	case <-ctx.Done():
	}
	_ = proc.Signal(syscall.SIGKILL)
	select {
	case <-proc.Done():
		return fmt.Errorf("worker %d did not stop in time and was killed", w.id)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("worker %d survived SIGKILL", w.id)
	}
}
