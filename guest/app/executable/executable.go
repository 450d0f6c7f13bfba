// Package executable runs a program that serves HTTP/1.1 on PORT (the
// configuration's interface "executable") and relays each host stream to
// it as one HTTP request over a keep-alive connection pool. A program that
// exits is restarted with backoff; requests wait for it.
package executable

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/internal/httpstream"
	"github.com/ferry-vm/ferry/internal/supervise"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Timing.
const (
	// DefaultListenTimeout bounds how long a starting program may take to
	// accept connections on its port.
	DefaultListenTimeout = 60 * time.Second
	// execWaitReady bounds how long a request waits for a restarting
	// program.
	execWaitReady = 30 * time.Second
	// idleConnTimeout is how long a connection to the program is kept
	// idle for the next request. Short, because a program that serves one
	// connection at a time (Python's http.server, many small servers)
	// keeps reading the idle one while a request that arrived meanwhile
	// waits on a connection of its own: the program reaches it only once
	// the idle one is closed. Under load connections are rarely idle this
	// long, so they are still reused. (nginx, in front of such programs,
	// speaks HTTP/1.0 to them and keeps nothing by default.)
	idleConnTimeout = time.Second
)

// Options configure an executable program.
type Options struct {
	Argv          []string
	Dir           string
	Env           []string
	Port          int
	ListenTimeout time.Duration
	Reaper        *reaper.Reaper
	Log           *slog.Logger
	Output        app.Output
}

// Program runs a program that serves HTTP/1.1 on PORT and relays each
// stream to it as one HTTP request over a keep-alive connection pool.
// Nothing is rewritten: redirects and encoded bodies pass through as the
// program sent them. A connection upgrade (websocket) is passed through as
// raw bytes in DATA frames once the program answers 101. A crashed program
// is restarted with backoff.
type Program struct {
	opt       Options
	log       *slog.Logger
	transport *http.Transport
	stopping  atomic.Bool
	ctx       context.Context // ends when Stop is called
	stop      context.CancelFunc

	mu    sync.Mutex
	proc  *app.Process  // current process
	addr  string        // host:port that accepted, while ready
	ready chan struct{} // closed when the current process accepts connections
}

// NewFactory returns the app.Factory for interface "executable".
func NewFactory(r *reaper.Reaper, log *slog.Logger) app.Factory {
	return func(ctx context.Context, c *contract.Config, codeDir string, out app.Output) (app.App, error) {
		return Start(ctx, Options{
			Argv: []string{c.Entrypoint}, Dir: codeDir, Env: app.Env(c), Port: c.ExecutablePort(),
			Reaper: r, Log: log, Output: out,
		})
	}
}

// Start starts the program and waits until it accepts connections on its
// port; a program that exits first or never listens is an *contract.ConfigError
// with its last output lines.
func Start(ctx context.Context, opt Options) (*Program, error) {
	if opt.ListenTimeout == 0 {
		opt.ListenTimeout = DefaultListenTimeout
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Output == nil {
		opt.Output = app.DiscardOutput{}
	}
	tail := app.NewOutputTail()
	opt.Output = tail.Tee(opt.Output)
	e := &Program{opt: opt, log: opt.Log.With("program", opt.Argv[0])}
	e.ctx, e.stop = context.WithCancel(context.Background())
	e.transport = &http.Transport{
		Proxy:               nil, // never an HTTP proxy from the environment
		DialContext:         e.dial,
		DisableCompression:  true, // bodies pass through encoded as they are
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     idleConnTimeout,
	}
	if err := e.start(ctx); err != nil {
		var serr *contract.ConfigError
		if errors.As(err, &serr) && serr.Detail == "" {
			serr.Detail = tail.Recent(0)
		}
		e.stop()
		return nil, err
	}
	go e.supervise()
	return e, nil
}

// start launches the process and waits for its port.
func (e *Program) start(ctx context.Context) error {
	p, err := app.StartProcess(e.opt.Reaper, e.log, app.ProcessSpec{Argv: e.opt.Argv, Dir: e.opt.Dir, Env: e.opt.Env, Output: e.opt.Output})
	if err != nil {
		return contract.NewConfigError(contract.PhaseApp, "entrypoint", err)
	}
	ready := make(chan struct{})
	e.mu.Lock()
	e.proc, e.addr, e.ready = p, "", ready
	e.mu.Unlock()
	addr, err := waitListening(ctx, p, e.opt.Port, e.opt.ListenTimeout)
	if err != nil {
		_ = p.Signal(syscall.SIGKILL)
		return contract.NewConfigError(contract.PhaseApp, "entrypoint", err)
	}
	e.mu.Lock()
	e.addr = addr
	e.mu.Unlock()
	close(ready)
	e.log.Info("program listening", "addr", addr)
	return nil
}

// waitListening polls the program's port on IPv4 and IPv6 loopback until
// one accepts, the process exits, or the timeout passes.
func waitListening(ctx context.Context, p *app.Process, port int, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	addrs := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), net.JoinHostPort("::1", strconv.Itoa(port))}
	var d net.Dialer
	for {
		for _, a := range addrs {
			dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			c, err := d.DialContext(dctx, "tcp", a)
			cancel()
			if err == nil {
				c.Close()
				return a, nil
			}
		}
		select {
		case <-p.Done():
			return "", fmt.Errorf("the program exited (%s) before accepting connections on port %d", p.Exit(), port)
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the program did not accept connections on port %d within %s", port, timeout)
		}
	}
}

// supervise restarts the program with backoff whenever it exits, until
// Stop.
func (e *Program) supervise() {
	// A program that exits is restarted after 100 ms, doubling up to 10 s
	// while it keeps exiting, from 100 ms again once it has run for 10 s
	// (README "Running the program").
	policy := supervise.Policy{Initial: 100 * time.Millisecond, Max: 10 * time.Second, ResetAfter: 10 * time.Second}
	supervise.Run(e.ctx, policy, supervise.Task{
		Running: true, // by Start
		Start:   e.start,
		Wait: func(ctx context.Context) error {
			e.mu.Lock()
			p := e.proc
			e.mu.Unlock()
			select {
			case <-p.Done():
			case <-ctx.Done():
				return ctx.Err()
			}
			e.transport.CloseIdleConnections()
			if e.stopping.Load() {
				return supervise.ErrStop
			}
			return errors.New(p.Exit().String())
		},
		Ended: func(how error, in time.Duration) {
			e.log.Warn("program exited; restarting", "status", how.Error(), "in", in)
		},
		Failed: func(err error, in time.Duration) {
			e.log.Error("program failed to restart", "err", err, "retry_in", in)
		},
	})
}

// dial connects to the program's port, waiting while it restarts.
func (e *Program) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	addr, err := e.waitReady(ctx)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (e *Program) waitReady(ctx context.Context) (string, error) {
	timer := time.NewTimer(execWaitReady)
	defer timer.Stop()
	for {
		e.mu.Lock()
		ready, addr := e.ready, e.addr
		e.mu.Unlock()
		select {
		case <-ready:
			if addr != "" {
				return addr, nil
			}
		default:
		}
		if e.stopping.Load() {
			return "", errors.New("the program is stopping")
		}
		select {
		case <-ready:
		case <-timer.C:
			return "", fmt.Errorf("the program did not come back within %s", execWaitReady)
		case <-ctx.Done():
			return "", ctx.Err()
		case <-e.ctx.Done():
		}
	}
}

// Serve relays one stream as an HTTP/1.1 request to the program.
func (e *Program) Serve(ctx context.Context, st *mux.Stream) {
	var head message.RequestHead
	if err := st.RequestHead(&head); err != nil {
		st.Reset(frame.CodeProtocol, "malformed request head: "+err.Error())
		return
	}
	if head.Kind == message.KindWebSocket {
		st.Reset(frame.CodeProtocol, "an executable takes websockets as HTTP upgrades (kind http with Upgrade headers), relayed as raw bytes")
		return
	}
	// The request is abandoned when the host resets the stream.
	ctx, cancel := httpstream.StreamContext(ctx, st)
	defer cancel()
	req, upgrade, err := httpstream.NewRequest(ctx, &head, st)
	if err != nil {
		st.Reset(frame.CodeProtocol, err.Error())
		return
	}
	resp, err := e.transport.RoundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			return // the host went away
		}
		st.Reset(frame.CodeWorkerLost, "the program did not answer: "+err.Error())
		return
	}
	defer resp.Body.Close()
	switching := resp.StatusCode == http.StatusSwitchingProtocols && upgrade
	rh := httpstream.ResponseHead(resp.StatusCode, resp.Header, switching)
	if switching {
		e.relayUpgrade(st, &rh, resp)
		return
	}
	buf := app.CopyBuffer()
	defer app.ReturnCopyBuffer(buf)
	if err := st.WriteResponse(&rh, nil, false); err != nil {
		refuseOversized(st, err)
		return
	}
	for {
		n, err := resp.Body.Read(*buf)
		if n > 0 {
			if _, werr := st.Write((*buf)[:n]); werr != nil {
				return // host reset: the deferred cancel and Close end the request
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			st.Reset(frame.CodeWorkerLost, "the program's response broke off: "+err.Error())
			return
		}
	}
	refuseOversized(st, st.CloseWriteTrailers(httpstream.Trailers(resp.Trailer)))
}

// refuseOversized resets a stream whose response head or trailers the
// program made too large for one frame (mux refused to send them): the
// host answers 502 for this request only, and the session goes on.
func refuseOversized(st *mux.Stream, err error) {
	if errors.Is(err, mux.ErrHeadTooLarge) {
		st.Reset(frame.CodeAppError, "the program's response head is too large: "+err.Error())
	}
}

// relayUpgrade answers 101 and then carries raw bytes both ways.
func (e *Program) relayUpgrade(st *mux.Stream, rh *message.ResponseHead, resp *http.Response) {
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		st.Reset(frame.CodeInternal, "upgraded connection is not writable")
		return
	}
	if err := st.WriteResponse(rh, nil, false); err != nil {
		refuseOversized(st, err)
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := io.Copy(conn, st)
		if err != nil {
			conn.Close()
			return
		}
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	_, err := io.Copy(st, conn)
	if err != nil {
		st.Reset(frame.CodeCancel, "upgraded connection failed: "+err.Error())
	} else {
		_ = st.CloseWrite()
	}
	conn.Close()
	<-done
}

// Stop stops the program (SIGTERM, then SIGKILL when ctx ends).
func (e *Program) Stop(ctx context.Context) error {
	if e.stopping.Swap(true) {
		return nil
	}
	e.stop()
	e.mu.Lock()
	p := e.proc
	e.mu.Unlock()
	err := p.Stop(ctx)
	e.transport.CloseIdleConnections()
	return err
}
