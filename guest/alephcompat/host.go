package alephcompat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ferry-vm/ferry/guest/transport"
)

// readyPatience is how long SignalReady keeps trying: the supervisor
// listens for the signal from the VM's start, but may be late.
const readyPatience = 30 * time.Second

// SignalReady tells the supervisor init is listening: it connects to the
// host's port 52, sends msgpack {"version": "2.0.0"} and closes (init1.py
// at its start; MicroVM.wait_for_init reads it to choose the
// configuration's version). A refused connection is retried for a while.
func SignalReady(ctx context.Context, d transport.HostDialer, log *slog.Logger) error {
	doc, err := msgpack.Marshal(&ready{Version: Version})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, readyPatience)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		c, err := d.Dial(ctx, Port)
		if err == nil {
			_, err = c.Write(doc)
			c.Close()
			if err == nil {
				return nil
			}
		}
		log.Debug("ready signal not delivered yet", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("ready signal to the host's port %d: %w", Port, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// Bridge is the reference's guest API bridge (init0.sh's socat): each
// connection to its unix socket is joined to a new connection to the
// host's port 53, where the supervisor serves the guest API.
type Bridge struct {
	l      net.Listener
	dialer transport.HostDialer
	log    *slog.Logger
	wg     sync.WaitGroup
}

// ListenBridge listens on the unix socket at path (an old socket there is
// replaced).
func ListenBridge(path string, d transport.HostDialer, log *slog.Logger) (*Bridge, error) {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("guest API bridge: %w", err)
	}
	os.Chmod(path, 0o666)
	b := &Bridge{l: l, dialer: d, log: log}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

func (b *Bridge) serve() {
	defer b.wg.Done()
	for {
		c, err := b.l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				b.log.Warn("guest API bridge stopped", "err", err)
			}
			return
		}
		go b.join(c)
	}
}

// join carries bytes both ways between a caller and the host's API port,
// passing each side's end of stream to the other.
func (b *Bridge) join(c net.Conn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	h, err := b.dialer.Dial(ctx, APIPort)
	cancel()
	if err != nil {
		b.log.Warn("guest API bridge cannot reach the host", "err", err)
		return
	}
	defer h.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(h, c)
		closeWrite(h)
		close(done)
	}()
	io.Copy(c, h)
	closeWrite(c)
	// As socat does (its -t 0.5 default), the caller gets half a second
	// to finish after the host has.
	select {
	case <-done:
	case <-time.After(500 * time.Millisecond):
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// Close stops accepting; connections in progress go on.
func (b *Bridge) Close() error {
	err := b.l.Close()
	b.wg.Wait()
	return err
}
