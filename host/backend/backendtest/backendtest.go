// Package backendtest is a VM backend for package tests. Its VMs are an
// in-process guest session at the other end of a socket pair that does
// what init does on the wire: it greets, takes the configuration, answers
// it (or refuses it), serves request streams with a handler, sends LOG
// lines, and powers off on GOAWAY. Tests hold boots, make them fail, make
// VMs die and count what was started, in milliseconds and without Python.
package backendtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Timeline is the boot timeline a VM reports with its configuration
// result.
var Timeline = []message.TimelineEntry{
	{Phase: []byte("kernel"), BootNano: uint64(10 * time.Millisecond)},
	{Phase: []byte("app"), BootNano: uint64(30 * time.Millisecond)},
}

// Backend starts fake VMs. Set its fields before the first Start.
type Backend struct {
	// Handler serves every VM's request streams (nil: each is answered
	// 200 with the body "ok").
	Handler func(*mux.Stream)
	// Gate, when not nil, holds every VM's configuration result until it
	// is closed: a boot in progress for as long as the test wants.
	Gate chan struct{}
	// Refuse, when not nil, is the configuration result every VM answers
	// instead of success (a program that fails to start).
	Refuse *message.ConfigResult
	// StartErr, when not nil, is returned by Start (a VM that cannot be
	// made at all).
	StartErr error
	// Space, when not nil, makes the backend a backend.SpaceChecker
	// whose volumes are on the filesystem it reports (for every
	// directory): Start refuses, as the real backends do, volumes that
	// do not fit there.
	Space backend.SpaceFunc
	// Logs is how many LOG lines ("line 0", "line 1"...) each VM sends
	// once it has its configuration, before answering it.
	Logs int

	boots   atomic.Int64
	mu      sync.Mutex
	vms     []*VM
	started chan *VM
	once    sync.Once
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return "fake" }

// Started delivers each VM as it is started (the first 1,024).
func (b *Backend) Started() <-chan *VM {
	b.init()
	return b.started
}

// Boots returns how many VMs were started (or failed to start).
func (b *Backend) Boots() int { return int(b.boots.Load()) }

// VMs returns the VMs started so far, oldest first.
func (b *Backend) VMs() []*VM {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*VM(nil), b.vms...)
}

// Live returns how many VMs have not ended.
func (b *Backend) Live() int {
	n := 0
	for _, v := range b.VMs() {
		if !v.Ended() {
			n++
		}
	}
	return n
}

func (b *Backend) init() { b.once.Do(func() { b.started = make(chan *VM, 1024) }) }

// Start implements backend.Backend.
func (b *Backend) Start(ctx context.Context, spec backend.Spec) (backend.VM, error) {
	b.init()
	b.boots.Add(1)
	if b.StartErr != nil {
		return nil, b.StartErr
	}
	if err := b.CheckSpace(spec); err != nil {
		return nil, err
	}
	host, guest, err := socketPair()
	if err != nil {
		return nil, err
	}
	v := &VM{Spec: spec, conn: host, done: make(chan struct{}), configured: make(chan struct{})}
	handler := b.Handler
	if handler == nil {
		handler = answerOK
	}
	v.guest = mux.Server(guest, mux.Config{KeepaliveInterval: -1, Handler: handler, OnControl: func(t frame.Type, p []byte) {
		if t == frame.TypeConfig {
			v.receive(p)
		}
	}})
	go b.run(v)
	go func() { <-v.done; v.guest.Close() }()
	b.mu.Lock()
	b.vms = append(b.vms, v)
	b.mu.Unlock()
	select {
	case b.started <- v:
	default:
	}
	return v, nil
}

// CheckSpace implements backend.SpaceChecker when Space is set: the
// spec's ephemeral volumes, and its persistent ones (none exists), must
// fit.
func (b *Backend) CheckSpace(spec backend.Spec) error {
	if b.Space == nil {
		return nil
	}
	return backend.CheckSpace(b.Space, backend.NewVolumeImages("/fake/volumes/"+spec.ProgramID, "/fake/ephemeral", spec.Volumes))
}

// run is the VM's init: configuration, result, then power-off on GOAWAY.
func (b *Backend) run(v *VM) {
	defer v.end(nil)
	select {
	case <-v.configured:
	case <-v.done:
		return
	}
	for i := range b.Logs {
		v.Log("stdout", fmt.Sprintf("line %d", i))
	}
	if b.Gate != nil {
		select {
		case <-b.Gate:
		case <-v.done:
			return
		}
	}
	result := &message.ConfigResult{OK: true, Timeline: Timeline}
	if b.Refuse != nil {
		result = b.Refuse
	}
	if err := v.guest.SendControlMessage(frame.TypeConfigResult, result); err != nil || !result.OK {
		<-v.done // init stays up after a refusal; the host kills the VM
		return
	}
	select {
	case <-v.guest.GoAwayReceived():
		v.goneAway.Store(true)
	case <-v.guest.Done():
	case <-v.done:
	}
}

// answerOK is the default handler: 200 "ok" after reading the request.
func answerOK(st *mux.Stream) {
	if _, err := io.Copy(io.Discard, st); err != nil {
		return
	}
	st.WriteResponse(&message.ResponseHead{Status: 200}, []byte("ok"), true)
}

// Seen is the request as a program behind Echo saw it.
type Seen struct {
	Method    string `json:"method"`
	RootPath  string `json:"root_path"`
	Path      string `json:"path"`
	RawPath   string `json:"raw_path"`
	Query     string `json:"query"`
	Host      string `json:"host"`
	BodyBytes int    `json:"body_bytes"`
	// FerryHeaders are the names of the x-ferry-* fields of the request
	// (x_ferry_* too), comma-separated.
	FerryHeaders string `json:"ferry_headers,omitempty"`
}

// Echo is a Handler that answers 200 with the request as the program saw
// it (Seen, as JSON). A request for /sleep is never answered: it waits for
// the host to end its stream (the client left, the time limit).
func Echo(st *mux.Stream) {
	var h message.RequestHead
	if err := st.RequestHead(&h); err != nil {
		st.Reset(frame.CodeProtocol, "bad head")
		return
	}
	if string(h.Path) == "/sleep" {
		<-st.Done()
		return
	}
	n, err := io.Copy(io.Discard, st)
	if err != nil {
		return
	}
	seen := Seen{Method: string(h.Method), RootPath: string(h.RootPath), Path: string(h.Path), RawPath: string(h.RawPath),
		Query: string(h.QueryString), BodyBytes: int(n)}
	var ferry []string
	for _, f := range h.Headers {
		if string(f.Name) == "host" {
			seen.Host = string(f.Value)
		}
		if strings.HasPrefix(strings.ReplaceAll(string(f.Name), "_", "-"), "x-ferry-") {
			ferry = append(ferry, string(f.Name))
		}
	}
	seen.FerryHeaders = strings.Join(ferry, ",")
	body, _ := json.Marshal(seen)
	st.WriteResponse(&message.ResponseHead{Status: 200, Headers: []message.HeaderField{
		{Name: []byte("content-type"), Value: []byte("application/json")}}}, body, true)
}

// VM is a fake VM.
type VM struct {
	// Spec is what the backend was asked for.
	Spec backend.Spec

	conn       net.Conn
	guest      *mux.Session
	configured chan struct{}
	mu         sync.Mutex
	config     []byte
	goneAway   atomic.Bool
	done       chan struct{}
	once       sync.Once
	err        error
}

// Session is the fake init's end of the VM's session, for opening
// streams toward the host as init does for the guest API.
func (v *VM) Session() *mux.Session { return v.guest }

// receive records the CONFIG document (the first one counts).
func (v *VM) receive(p []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.config == nil {
		v.config = append([]byte(nil), p...)
		close(v.configured)
	}
}

// Config returns the CONFIG document the host sent, or nil before it.
func (v *VM) Config() []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.config
}

// Log sends a LOG line from the program, as init forwards its output.
func (v *VM) Log(source, line string) error {
	return v.guest.SendControlMessage(frame.TypeLog, &message.Log{Source: []byte(source), UnixNano: uint64(time.Now().UnixNano()), Line: []byte(line)})
}

// GoneAway reports whether the host asked the VM to stop (GOAWAY).
func (v *VM) GoneAway() bool { return v.goneAway.Load() }

// Die ends the VM as a crash would, with err as its exit status.
func (v *VM) Die(err error) { v.end(err) }

// Ended reports whether the VM has ended.
func (v *VM) Ended() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

func (v *VM) end(err error) {
	v.once.Do(func() {
		v.err = err
		v.conn.Close()
		close(v.done)
	})
}

// ErrKilled is the exit status of a VM the host killed.
var ErrKilled = errors.New("killed")

// Conn implements backend.VM.
func (v *VM) Conn() io.ReadWriteCloser { return v.conn }

// Guest implements backend.VM.
// The code is where a real VM has it: a directory at the guest's default
// place.
func (v *VM) Guest() backend.Guest {
	return backend.Guest{Code: contract.Code{Encoding: contract.EncodingDirectory, Source: contract.Source{Path: contract.DefaultCodeDir}}}
}

// Network implements backend.VM.
func (v *VM) Network() *backend.Network { return nil }

// Done implements backend.VM.
func (v *VM) Done() <-chan struct{} { return v.done }

// Err implements backend.VM.
func (v *VM) Err() error {
	select {
	case <-v.done:
		return v.err
	default:
		return nil
	}
}

// Kill implements backend.VM.
func (v *VM) Kill() { v.end(ErrKilled) }

// Describe implements backend.VM.
func (v *VM) Describe() string { return "fake vm" }

// socketPair returns the two ends of a unix stream socket pair: buffered
// like the transports of real VMs, unlike net.Pipe.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	files := [2]*os.File{os.NewFile(uintptr(fds[0]), "fake-vm-host"), os.NewFile(uintptr(fds[1]), "fake-vm-guest")}
	defer files[0].Close()
	defer files[1].Close()
	var conns [2]net.Conn
	for i, f := range files {
		if conns[i], err = net.FileConn(f); err != nil {
			if i == 1 {
				conns[0].Close()
			}
			return nil, nil, fmt.Errorf("socketpair: %w", err)
		}
	}
	return conns[0], conns[1], nil
}
