// Package service is init's conversation with the host: it accepts the
// transport connection, runs the Ferry session, takes the one
// configuration, applies it and answers with success or a structured
// error plus the boot timeline, hands request streams to the app, and
// drives the orderly shutdown. A bad configuration, a failed app or a
// broken connection is answered and logged; the service keeps running.
package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"runtime/debug"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/hostapi"
	"github.com/ferry-vm/ferry/guest/setup"
	"github.com/ferry-vm/ferry/internal/logring"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Options configure the service.
type Options struct {
	Log      *slog.Logger
	Timeline *boot.Timeline
	Setup    setup.Options
	// Apps maps an interface (asgi, executable) to its runner.
	Apps  map[string]app.Factory
	Agent string
	// Console, when set, also receives each line of program output, as
	// "source: line" (the reference runtime's programs print to the VM's
	// console, which its supervisor reads).
	Console io.Writer
	// APIAddress is where the guest API is served when the configuration
	// names no api_address (contract.DefaultAPIAddress when empty; init
	// run by hand shares the machine's loopback and asks for any port).
	APIAddress string
	// HandshakeTimeout bounds how long a host connection may take to
	// complete its handshake before it is closed (DefaultHandshakeTimeout
	// when zero).
	HandshakeTimeout time.Duration
	// MaxPending bounds how many host connections may wait for their
	// handshake at once; beyond it the oldest is closed
	// (DefaultMaxPending when zero).
	MaxPending int
}

// Service is init's host-facing side.
type Service struct {
	opt Options
	log *slog.Logger

	mu         sync.Mutex
	configured bool
	// stopApply cancels the configuration being applied, nil when none
	// is; applying is held while one is, so that Stop, after cancelling
	// it, waits for it to end and then stops what it started.
	stopApply context.CancelFunc
	applying  sync.Mutex
	app       app.App
	mounts    []string
	session   *mux.Session    // the current host session: the newest handshaken
	pending   []*pendingConn  // host connections waiting for their handshake, oldest first
	api       *hostapi.Server // nil until configured, or when it could not listen

	shutdown     chan string // reason; buffered
	shutdownOnce sync.Once

	output  *logring.Ring
	logMu   sync.Mutex // orders LOG frames and guards logSent
	logSent uint64     // last output line sent to the host
}

// Output keeps this many recent lines of program output for hosts that
// connect later.
const (
	outputLines = 1000
	outputBytes = 256 << 10
)

// New returns a service.
func New(opt Options) *Service {
	return &Service{opt: opt, log: opt.Log, shutdown: make(chan string, 1), output: logring.NewRing(outputLines, outputBytes)}
}

// Line takes one line of program output (it implements app.Output): it is
// kept in the ring buffer and sent to the host as a LOG frame.
func (s *Service) Line(source string, origin int, line []byte) {
	e := s.output.Add(source, origin, time.Now().UnixNano(), line)
	s.log.Debug("program output", "source", source, "origin", origin, "line", string(line))
	if s.opt.Console != nil {
		s.opt.Console.Write(append(append([]byte(source+": "), line...), '\n'))
	}
	s.mu.Lock()
	sess := s.session
	s.mu.Unlock()
	if sess != nil {
		s.sendOutput(sess, e.Seq-1)
	}
}

// sendOutput sends the kept lines after seq that the host has not had yet.
func (s *Service) sendOutput(sess *mux.Session, after uint64) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	for _, e := range s.output.Since(max(after, s.logSent)) {
		l := message.Log{Source: []byte(e.Source), Origin: uint32(e.Origin), UnixNano: uint64(e.UnixNano), Line: e.Line}
		if err := sess.SendControlMessage(frame.TypeLog, &l); err != nil {
			return
		}
		s.logSent = e.Seq
	}
}

// ShutdownRequested receives a reason when the host asked to stop (GOAWAY)
// or Shutdown was called.
func (s *Service) ShutdownRequested() <-chan string { return s.shutdown }

// RequestShutdown asks the service to begin shutdown (e.g. on SIGTERM).
func (s *Service) RequestShutdown(reason string) {
	s.shutdownOnce.Do(func() { s.shutdown <- reason })
}

// ServeStream hands a stream to the running program as if the host had
// opened it (init's other front ends: the reference protocol).
func (s *Service) ServeStream(ctx context.Context, st *mux.Stream) { s.serveStream(ctx, st) }

// ApplyDocument applies a configuration document (JSON, contract.Config)
// exactly as one arriving in a CONFIG frame, for init's other front ends;
// nil is success.
func (s *Service) ApplyDocument(ctx context.Context, doc []byte) *contract.ConfigError {
	if err := s.apply(ctx, doc); err != nil {
		s.log.Warn("configuration failed", "phase", err.Phase, "field", err.Field, "message", err.Message)
		return err
	}
	s.log.Info("configured", "timeline", s.opt.Timeline.String())
	return nil
}

// serveStream hands a stream the host opened to the running program.
func (s *Service) serveStream(ctx context.Context, st *mux.Stream) {
	s.mu.Lock()
	a := s.app
	s.mu.Unlock()
	if a == nil {
		st.Reset(frame.CodeUnavailable, "program not configured or not running")
		return
	}
	s.safely("stream", func() { a.Serve(ctx, st) })
}

// safely runs f, turning a panic into a log line and a LOG frame to the
// host (PID 1 must not die).
func (s *Service) safely(what string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("recovered from panic", "in", what, "panic", r, "stack", string(debug.Stack()))
			s.TellHost(fmt.Sprintf("init recovered from an internal error in %s: %v", what, r))
		}
	}()
	f()
}

// TellHost sends a line from init itself to the host's logs, if connected.
func (s *Service) TellHost(line string) {
	s.mu.Lock()
	sess := s.session
	s.mu.Unlock()
	if sess == nil {
		return
	}
	l := message.Log{Source: []byte("init"), UnixNano: uint64(time.Now().UnixNano()), Line: []byte(line)}
	if err := sess.SendControlMessage(frame.TypeLog, &l); err != nil {
		s.log.Debug("cannot send log line to the host", "err", err)
	}
}

// configure applies the one configuration and answers CONFIG_RESULT.
func (s *Service) configure(ctx context.Context, sess *mux.Session, doc []byte) {
	result := &message.ConfigResult{OK: true}
	if err := s.apply(ctx, doc); err != nil {
		result = err.Result()
		s.log.Warn("configuration failed", "phase", err.Phase, "field", err.Field, "message", err.Message)
	} else {
		s.log.Info("configured", "timeline", s.opt.Timeline.String())
	}
	result.Timeline = s.opt.Timeline.Entries()
	if err := sess.SendControlMessage(frame.TypeConfigResult, result); err != nil {
		s.log.Warn("cannot send configuration result", "err", err)
	}
}

// apply validates and applies a configuration and starts its app; every
// failure is a *contract.ConfigError naming the phase and field.
func (s *Service) apply(ctx context.Context, doc []byte) *contract.ConfigError {
	s.mu.Lock()
	if s.configured {
		s.mu.Unlock()
		return &contract.ConfigError{Phase: contract.PhaseValidate, Message: "already configured: a VM takes one configuration"}
	}
	s.configured = true
	ctx, cancel := context.WithCancel(ctx)
	s.stopApply = cancel
	s.applying.Lock()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.stopApply = nil // the app started under ctx: it is not cancelled
		s.mu.Unlock()
		s.applying.Unlock()
	}()

	c, err := contract.Parse(doc)
	if err != nil {
		s.allowRetry()
		return contract.AsConfigError(err, contract.PhaseValidate, "")
	}
	s.opt.Timeline.Mark("config")
	res, err := setup.Apply(ctx, s.log, c, s.opt.Setup, s.opt.Timeline)
	s.mu.Lock()
	s.mounts = append(s.mounts, res.Mounts...)
	s.mu.Unlock()
	if err != nil {
		return contract.AsConfigError(err, contract.PhaseSetup, "")
	}
	s.startAPI(c)
	factory := s.opt.Apps[c.Interface]
	if factory == nil {
		return contract.NewConfigError(contract.PhaseApp, "interface", fmt.Errorf("no runner for interface %q in this init", c.Interface))
	}
	a, err := factory(ctx, c, res.CodeDir, s)
	if err != nil {
		return contract.AsConfigError(err, contract.PhaseApp, "entrypoint")
	}
	s.mu.Lock()
	s.app = a
	s.mu.Unlock()
	s.opt.Timeline.Mark("app")
	return nil
}

// startAPI starts serving the guest API and tells the program where, in
// c.Env. An API that cannot listen is reported to the host; the program
// starts without it (and without FERRY_API_URL).
func (s *Service) startAPI(c *contract.Config) {
	addr := c.API
	if addr == "" {
		addr = cmp.Or(s.opt.APIAddress, contract.DefaultAPIAddress)
	}
	api, err := hostapi.Listen(addr, hostapi.Options{Session: s.currentSession, Log: s.log.With("part", "guest-api")})
	if err != nil {
		s.log.Warn("cannot serve the guest API", "address", addr, "err", err)
		s.TellHost(fmt.Sprintf("init cannot serve the guest API on %s: %v", addr, err))
		return
	}
	s.mu.Lock()
	s.api = api
	s.mu.Unlock()
	env := maps.Clone(c.Env)
	if env == nil {
		env = map[string]string{}
	}
	env[contract.APIURLEnv] = api.URL()
	c.Env = env
	s.log.Info("serving the guest API", "url", api.URL())
}

// currentSession is the session with the host, nil when there is none.
func (s *Service) currentSession() *mux.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session
}

// allowRetry lets the host send a corrected configuration after one that
// failed validation (nothing was applied yet).
func (s *Service) allowRetry() {
	s.mu.Lock()
	s.configured = false
	s.mu.Unlock()
}

// Stop stops the app within grace, tells the host, and unmounts volumes in
// reverse order. It returns the errors met, all already logged.
func (s *Service) Stop(grace time.Duration) error {
	// A configuration still being applied (the host or the supervisor
	// stops before it is answered) is cancelled and waited for, so that
	// what it mounted and started is stopped here, not left running.
	s.mu.Lock()
	if s.stopApply != nil {
		s.stopApply()
	}
	s.mu.Unlock()
	s.applying.Lock()
	s.applying.Unlock()
	s.mu.Lock()
	a, sess, mounts, api := s.app, s.session, s.mounts, s.api
	s.app, s.api, s.mounts = nil, nil, nil
	s.mu.Unlock()
	if sess != nil {
		_ = sess.GoAway(frame.CodeNoError, "guest shutting down")
	}
	var errs []error
	if a != nil {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		if err := a.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	if api != nil {
		// After the app: its shutdown may still call the API.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = api.Close(ctx)
		cancel()
	}
	if sess != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = sess.Shutdown(ctx)
		cancel()
	}
	if err := boot.Unmount(mounts); err != nil {
		errs = append(errs, err)
	} else if len(mounts) > 0 {
		s.log.Info("unmounted volumes", "targets", mounts)
	}
	return errors.Join(errs...)
}
