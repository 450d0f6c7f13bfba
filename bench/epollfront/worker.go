package epollfront

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Receive limits the front announces on a worker's data channel, as the
// host agent does (SPEC.md §11).
const (
	maxFrameSize  = 256 << 10
	initialWindow = 256 << 10
	maxStreams    = 1024
)

// process is one running ASGI worker: its process, the control session
// that configured it (kept open, as init keeps it) and the front's end of
// its data channel, past the HELLO exchange.
type process struct {
	cmd     *exec.Cmd
	control *mux.Session
	data    int           // the data channel, non-blocking
	peer    message.Hello // the worker's HELLO on the data channel
	exited  chan struct{}
}

// startWorker runs worker.py as init does (control channel on fd 3, data
// channel on fd 4), configures it with the app, and exchanges HELLO on the
// data channel.
func startWorker(ctx context.Context, opt Options, id int) (_ *process, err error) {
	control, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("worker %d: control socket pair: %w", id, err)
	}
	data, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		unix.Close(control[0])
		unix.Close(control[1])
		return nil, fmt.Errorf("worker %d: data socket pair: %w", id, err)
	}
	theirs := []*os.File{os.NewFile(uintptr(control[1]), "worker-control"), os.NewFile(uintptr(data[1]), "worker-data")}
	ours := os.NewFile(uintptr(control[0]), "control")
	defer func() {
		if err != nil {
			unix.Close(data[0])
		}
	}()
	cmd := exec.Command(opt.Python, "-u", opt.Script, "--fd", "3", "--data-fd", "4")
	cmd.Dir = opt.CodeDir
	cmd.Stdout, cmd.Stderr = opt.Output, opt.Output
	cmd.ExtraFiles = theirs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	for _, f := range theirs {
		f.Close()
	}
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("worker %d: %w", id, err)
	}
	p := &process{cmd: cmd, data: data[0], exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	defer func() {
		if err != nil {
			p.kill()
		}
	}()
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("worker %d: %w", id, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	doc := map[string]any{"app": opt.App, "code_dir": opt.CodeDir, "packages": "", "worker": id, "lifespan": "auto"}
	if p.control, _, err = contract.Configure(ctx, conn, mux.Config{Agent: "epollfront", Logger: opt.Log}, doc); err != nil {
		return nil, fmt.Errorf("worker %d: configuring: %w", id, err)
	}
	// A worker that never says HELLO on its data channel fails the start
	// instead of hanging it.
	if err := unix.SetsockoptTimeval(data[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 30}); err != nil {
		return nil, fmt.Errorf("worker %d: %w", id, err)
	}
	if p.peer, err = handshake(data[0]); err != nil {
		return nil, fmt.Errorf("worker %d: data channel: %w", id, err)
	}
	if err := unix.SetNonblock(data[0], true); err != nil {
		return nil, fmt.Errorf("worker %d: %w", id, err)
	}
	return p, nil
}

// handshake sends the client's HELLO on a blocking descriptor and reads
// the worker's, which must be the first frame (SPEC.md §3.1).
func handshake(fd int) (message.Hello, error) {
	ours := message.Hello{Version: 1, Role: 1, MaxFrameSize: maxFrameSize, InitialWindow: initialWindow, MaxStreams: maxStreams, Agent: []byte("epollfront")}
	if _, err := unix.Write(fd, appendFrame(nil, frame.TypeHello, 0, 0, ours.Append(nil))); err != nil {
		return message.Hello{}, fmt.Errorf("sending HELLO: %w", err)
	}
	h, payload, err := frame.NewReader(readerOf(fd), maxFrameSize).ReadFrame()
	if err != nil {
		return message.Hello{}, fmt.Errorf("reading HELLO: %w", err)
	}
	var peer message.Hello
	if h.Type != frame.TypeHello {
		return peer, fmt.Errorf("first frame is %s, not HELLO", h.Type)
	}
	if err := peer.Unmarshal(append([]byte(nil), payload...)); err != nil {
		return peer, fmt.Errorf("HELLO: %w", err)
	}
	if peer.Version != 1 || peer.Role != 2 || peer.InitialWindow == 0 || peer.MaxFrameSize < 16<<10 {
		return peer, fmt.Errorf("unexpected HELLO %+v", peer)
	}
	return peer, nil
}

// readerOf reads a blocking descriptor without taking it over.
type readerOf int

func (fd readerOf) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(fd), p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n == 0 && err == nil {
			return 0, errors.New("the worker closed its data channel")
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// kill ends the worker and its sessions.
func (p *process) kill() {
	if p.control != nil {
		p.control.Close()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// appendFrame appends a whole frame to b.
func appendFrame(b []byte, t frame.Type, f frame.Flags, id uint32, payload []byte) []byte {
	b = frame.AppendHeader(b, frame.Header{Type: t, Flags: f, StreamID: id, Length: uint32(len(payload))})
	return append(b, payload...)
}
