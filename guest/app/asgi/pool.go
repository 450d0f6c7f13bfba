package asgi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/app/asgi/forward"
	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// DefaultPython is the interpreter used when the configuration names none:
// Debian's, which has the distribution's ASGI packages.
const DefaultPython = "/usr/bin/python3"

// Options configure a pool.
type Options struct {
	App      string // module:attribute
	CodeDir  string // first on sys.path, and the working directory
	Packages string // second on sys.path, if set
	Workers  int    // processes; 0 means one per CPU
	Python   string // interpreter; DefaultPython if empty
	Env      []string
	// ScriptDir is where worker.py is written (a tmpfs in the guest);
	// os.TempDir() if empty.
	ScriptDir string
	// StartTimeout bounds importing the app and its lifespan startup.
	StartTimeout time.Duration
	// WaitReady bounds how long a request waits for a worker while all are
	// restarting.
	WaitReady time.Duration
	Reaper    *reaper.Reaper
	Log       *slog.Logger
	Output    app.Output
	// Channels, when set, is the channel socket to the host: each start
	// of a worker passes the host its data channel there, and the host
	// sends it requests directly (SPEC.md §11); Serve remains for the
	// streams that reach init.
	Channels *contract.Channels
}

// Pool is a running set of ASGI workers; it implements app.App.
type Pool struct {
	opt      Options
	log      *slog.Logger
	script   string
	workers  []*worker
	tail     *app.OutputTail
	stopping atomic.Bool
	cancel   context.CancelFunc

	mu    sync.Mutex
	ready chan struct{} // closed and replaced whenever a worker comes or goes
}

// NewFactory returns the app.Factory for interface "asgi"; channels, if
// not nil, is the channel socket to the host (Options.Channels).
func NewFactory(r *reaper.Reaper, log *slog.Logger, channels *contract.Channels) app.Factory {
	return func(ctx context.Context, c *contract.Config, codeDir string, out app.Output) (app.App, error) {
		env := append(app.Env(c), "PYTHONUNBUFFERED=1")
		return Start(ctx, Options{
			App: c.Entrypoint, CodeDir: codeDir, Packages: c.Packages, Workers: c.Workers,
			Python: c.Python, Env: env, Reaper: r, Log: log, Output: out, Channels: channels,
		})
	}
}

// Start starts the workers and waits until every one has imported the app
// and finished its lifespan startup. The first failure stops them all and
// is returned as a *contract.ConfigError carrying the worker's traceback.
func Start(ctx context.Context, opt Options) (*Pool, error) {
	if opt.Workers <= 0 {
		opt.Workers = runtime.NumCPU()
	}
	if opt.Python == "" {
		opt.Python = DefaultPython
	}
	if opt.ScriptDir == "" {
		opt.ScriptDir = os.TempDir()
	}
	if opt.StartTimeout == 0 {
		opt.StartTimeout = 2 * time.Minute
	}
	if opt.WaitReady == 0 {
		opt.WaitReady = 30 * time.Second
	}
	if opt.Output == nil {
		opt.Output = app.DiscardOutput{}
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat(opt.Python); err != nil {
		return nil, &contract.ConfigError{Phase: contract.PhaseApp, Field: "python", Message: fmt.Sprintf("no Python interpreter at %s", opt.Python)}
	}
	script, err := WriteWorkerScript(opt.ScriptDir)
	if err != nil {
		return nil, err
	}
	tail := app.NewOutputTail()
	opt.Output = tail.Tee(opt.Output)
	runCtx, cancel := context.WithCancel(context.Background())
	p := &Pool{opt: opt, log: opt.Log.With("app", opt.App), script: script, tail: tail, cancel: cancel, ready: make(chan struct{})}
	for i := range opt.Workers {
		p.workers = append(p.workers, &worker{pool: p, id: i + 1})
	}
	for _, err := range p.eachWorker(func(w *worker) error { return w.start(ctx) }) {
		if err != nil {
			stopCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
			_ = p.Stop(stopCtx)
			stop()
			return nil, err
		}
	}
	for _, w := range p.workers {
		go w.supervise(runCtx)
	}
	p.log.Info("ASGI workers ready", "workers", len(p.workers), "python", opt.Python)
	return p, nil
}

// eachWorker runs f on every worker at once and returns their errors, by
// worker.
func (p *Pool) eachWorker(f func(*worker) error) []error {
	errs := make([]error, len(p.workers))
	var wg sync.WaitGroup
	for i, w := range p.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(w)
		}()
	}
	wg.Wait()
	return errs
}

// changed wakes requests waiting for a worker.
func (p *Pool) changed() {
	p.mu.Lock()
	close(p.ready)
	p.ready = make(chan struct{})
	p.mu.Unlock()
}

// pick returns the least busy live worker with its session and process,
// counting the new stream against it, waiting while none is live.
func (p *Pool) pick(ctx context.Context) (*worker, *mux.Session, *app.Process, error) {
	deadline := time.NewTimer(p.opt.WaitReady)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		ready := p.ready
		p.mu.Unlock()
		var best *worker
		var bestSess *mux.Session
		var bestProc *app.Process
		var bestLoad int64
		for _, w := range p.workers {
			sess, proc := w.current()
			if sess == nil {
				continue
			}
			if load := w.inflight.Load(); best == nil || load < bestLoad {
				best, bestSess, bestProc, bestLoad = w, sess, proc, load
			}
		}
		if best != nil {
			best.inflight.Add(1)
			return best, bestSess, bestProc, nil
		}
		if p.stopping.Load() {
			return nil, nil, nil, errors.New("the program is stopping")
		}
		select {
		case <-ready:
		case <-deadline.C:
			return nil, nil, nil, fmt.Errorf("no ASGI worker came up within %s", p.opt.WaitReady)
		case <-ctx.Done():
			return nil, nil, nil, ctx.Err()
		}
	}
}

// Serve relays one host stream to the least busy worker: the streams
// that reach init rather than a worker's data channel (no channel socket,
// as over virtio-serial, or none of the workers' channels up at the host).
func (p *Pool) Serve(ctx context.Context, host *mux.Stream) {
	w, sess, proc, err := p.pick(ctx)
	if err != nil {
		host.Reset(frame.CodeUnavailable, err.Error())
		return
	}
	defer w.inflight.Add(-1)
	peer, err := forward.Open(ctx, sess, host)
	if err != nil {
		host.Reset(frame.CodeWorkerLost, fmt.Sprintf("worker %d: %v", w.id, err))
		return
	}
	forward.Stream(host, peer, w.lost(proc))
}

// Stop lets every worker finish its requests and run its lifespan shutdown
// within ctx, then kills what remains.
func (p *Pool) Stop(ctx context.Context) error {
	p.stopping.Store(true)
	defer p.cancel()
	errs := p.eachWorker(func(w *worker) error { return w.stop(ctx) })
	os.RemoveAll(filepath.Dir(p.script))
	return errors.Join(errs...)
}

// Workers returns the process ids of the live workers, by worker number
// (0 for a worker that is down); for tests and status.
func (p *Pool) Workers() []int {
	pids := make([]int, len(p.workers))
	for i, w := range p.workers {
		w.mu.Lock()
		if w.sess != nil && w.proc != nil {
			pids[i] = w.proc.Pid()
		}
		w.mu.Unlock()
	}
	return pids
}
