// Package loopfront is the host agent's event-loop HTTP front (issue 17,
// BENCHMARKS.md "an event-loop front"): one epoll loop, on one locked
// thread, owns the agent's client connections and the data channels of
// the VMs' ASGI workers, and relays the requests it can serve straight
// from one to the other, with no goroutine per connection and no reader
// goroutine per worker session between them.
//
// It serves what parses under a strict subset of HTTP/1.1 and routes to
// an ASGI program whose VM is running with a live worker channel:
// origin-form targets without percent-escapes, one Host, bodies framed by
// one Content-Length, no upgrade, no Expect, no transfer coding. Every
// other request, and every connection from then on, it hands to the
// agent's net/http server (Handoffs), with the bytes it has read: that
// server serves it as the agent always did (through init, since the
// loop holds the worker channels), answers what is malformed, boots
// stopped programs, carries websockets and forwards within a cluster.
package loopfront

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/dataplane"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
)

// Options configure a Front.
type Options struct {
	// Limits are the listener's timeouts, as for the net/http server.
	Limits front.ConnLimits
	// Agent names the host in HELLO on worker channels.
	Agent string
	Log   *slog.Logger
}

// Front is the event loop of one listener. Made before the VMs start (it
// adopts their worker channels, dataplane.Adopter), it serves once Serve
// is called.
type Front struct {
	opt      Options
	log      *slog.Logger
	router   *front.Router // set by Serve
	handoffs *handoffListener
	wake     int // an eventfd: commands are waiting

	mu       sync.Mutex
	commands []func(*loop) // run by the loop, in order
	sets     map[*dataplane.Set]bool
	live     map[*dataplane.Set]int // channels the loop holds, by set
	stopped  bool

	done chan struct{} // closed when Serve returns
}

// New makes a front; Serve starts it.
func New(opt Options) (*Front, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Agent == "" {
		opt.Agent = "ferry-host-agent"
	}
	opt.Limits = opt.Limits.WithDefaults()
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("loopfront: eventfd: %w", err)
	}
	return &Front{opt: opt, log: opt.Log, handoffs: newHandoffListener(), wake: wake,
		sets: map[*dataplane.Set]bool{}, live: map[*dataplane.Set]int{}, done: make(chan struct{})}, nil
}

// Handoffs is the listener of the connections the front hands over: the
// agent's net/http server serves it. Its address is Serve's listener's.
func (f *Front) Handoffs() net.Listener { return f.handoffs }

// Serve serves ln's connections until ctx ends or Shutdown has drained
// the front, then closes ln, every connection it still holds and its
// worker channels. It is called once. rt routes requests and holds the
// programs, the lifecycle manager, the limits and the metrics: the front
// takes the requests it may serve itself (Router.FastRoute), the net/http
// server on Handoffs the rest.
func (f *Front) Serve(ctx context.Context, ln *net.TCPListener, rt *front.Router) error {
	defer close(f.done)
	defer f.closeWake()
	defer f.handoffs.Close() // the net/http server's Serve returns
	f.handoffs.setAddr(ln.Addr())
	if rt == nil {
		ln.Close()
		return errors.New("loopfront: no router")
	}
	f.router = rt
	file, err := ln.File() // the front's own descriptor of the socket
	ln.Close()
	if err != nil {
		return fmt.Errorf("loopfront: the listener's descriptor: %w", err)
	}
	defer file.Close()
	l, err := newLoop(f, int(file.Fd()))
	if err != nil {
		return err
	}
	defer l.close()
	stop := context.AfterFunc(ctx, func() { f.do(func(l *loop) { l.quit = true }) })
	defer stop()
	return l.run()
}

// Shutdown stops accepting connections, closes the idle ones and waits,
// until ctx ends, for the requests the loop is serving to finish and for
// handedOver to close; then Serve returns. The handed-off connections are
// the net/http server's to drain: the caller closes handedOver once it
// has (its Shutdown returned), since the worker channels the loop holds
// carry that server's requests too (side sessions). A nil handedOver is
// closed.
func (f *Front) Shutdown(ctx context.Context, handedOver <-chan struct{}) error {
	f.do(func(l *loop) { l.drain() })
	go func() {
		if handedOver != nil {
			select {
			case <-handedOver:
			case <-f.done:
				return
			}
		}
		f.do(func(l *loop) { l.handoffsDrained = true })
	}()
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		f.do(func(l *loop) { l.quit = true })
		<-f.done
		return ctx.Err()
	}
}

// do queues cmd for the loop and wakes it; false when the loop has ended
// (cmd is dropped).
func (f *Front) do(cmd func(*loop)) bool {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return false
	}
	f.commands = append(f.commands, cmd)
	f.wakeLocked()
	f.mu.Unlock()
	return true
}

// wakeLocked wakes the loop; f.mu is held, so that the eventfd is not
// closed meanwhile (closeWake), and its number, reused, written to.
func (f *Front) wakeLocked() {
	var one = [8]byte{7: 1}
	unix.Write(f.wake, one[:])
}

// closeWake closes the eventfd once the loop has stopped taking
// commands.
func (f *Front) closeWake() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	unix.Close(f.wake)
	f.wake = -1
}

// takeCommands returns the queued commands; stop says no more are taken.
func (f *Front) takeCommands(stop bool) []func(*loop) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmds := f.commands
	f.commands = nil
	f.stopped = f.stopped || stop
	return cmds
}

// Adopt implements dataplane.Adopter: it greets the worker on its new
// channel (blocking, in a goroutine of its own, bounded by
// dataplane.HandshakeTimeout) and gives the channel to the loop.
func (f *Front) Adopt(set *dataplane.Set, ch contract.WorkerChannel, conn *os.File) {
	f.mu.Lock()
	if _, known := f.sets[set]; !known {
		f.sets[set] = true
	}
	live := f.sets[set]
	f.mu.Unlock()
	if !live {
		conn.Close()
		return
	}
	go func() {
		log := f.log.With("worker", ch.Worker, "start", ch.Start)
		fd, peer, shared, err := greet(conn, f.opt.Agent, log)
		if err != nil {
			log.Warn("worker channel: no HELLO from the worker", "err", err)
			return
		}
		f.mu.Lock()
		live := f.sets[set] && !f.stopped
		if live {
			// Queued under mu: a Forget of set comes after it.
			f.commands = append(f.commands, func(l *loop) { l.addChannel(set, ch, fd, peer, shared) })
			f.wakeLocked()
		}
		f.mu.Unlock()
		if !live {
			unix.Close(fd)
			shared.close()
			return
		}
		log.Debug("worker channel adopted by the event loop")
	}()
}

// Forget implements dataplane.Adopter: the loop closes set's channels,
// failing the requests on them.
func (f *Front) Forget(set *dataplane.Set) {
	f.mu.Lock()
	f.sets[set] = false // a handshake under way drops its channel
	f.mu.Unlock()
	f.do(func(l *loop) { l.forgetSet(set) })
	// The entry stays false until the loop has run the command, then goes.
	f.do(func(*loop) {
		f.mu.Lock()
		delete(f.sets, set)
		f.mu.Unlock()
	})
}

// Live implements dataplane.Adopter.
func (f *Front) Live(set *dataplane.Set) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live[set]
}

// setLive records how many live channels of set the loop holds.
func (f *Front) setLive(set *dataplane.Set, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n == 0 {
		delete(f.live, set)
		return
	}
	f.live[set] = n
}

// greet sends the host's HELLO on a worker channel and reads the
// worker's, blocking with a time limit; it returns the channel's
// descriptor, non-blocking, for the loop, and the channel's shared body
// buffer if it has one (nil if not).
func greet(conn *os.File, agent string, log *slog.Logger) (int, message.Hello, *sharedBuffer, error) {
	fd, err := unix.Dup(int(conn.Fd()))
	conn.Close()
	if err != nil {
		return -1, message.Hello{}, nil, err
	}
	unix.CloseOnExec(fd)
	var shared *sharedBuffer
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
			shared.close()
		}
	}()
	if err := unix.SetNonblock(fd, false); err != nil {
		return -1, message.Hello{}, nil, err
	}
	tv := unix.NsecToTimeval(int64(dataplane.HandshakeTimeout / time.Nanosecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return -1, message.Hello{}, nil, err
	}
	// A unix channel (the sandbox) gets a shared body buffer, sent with
	// the HELLO; a worker that does not take it closes it unread.
	sharedFd := -1
	if sa, err := unix.Getsockname(fd); err == nil {
		if _, isUnix := sa.(*unix.SockaddrUnix); isUnix {
			if shared, sharedFd, err = newSharedBuffer(); err != nil {
				// The channel works without it: bodies go in DATA frames.
				log.Warn("worker channel: no shared body buffer", "err", err)
				shared, sharedFd = nil, -1
			} else {
				defer unix.Close(sharedFd)
			}
		}
	}
	peer, err := handshake(fd, agent, time.Now().Add(dataplane.HandshakeTimeout), sharedFd)
	if err != nil {
		return -1, message.Hello{}, nil, err
	}
	if shared != nil && peer.SharedBuffer != 1 {
		// The worker did not take it (another implementation, or it
		// could not map it): bodies go in DATA frames both ways.
		shared.close()
		shared = nil
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return -1, message.Hello{}, nil, err
	}
	ok = true
	return fd, peer, shared, nil
}
