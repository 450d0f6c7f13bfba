package loopfront

import (
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/dataplane"
)

// newTestLoop returns a loop as newLoop makes one, without a listener:
// its epoll instance watches nothing yet, its Front logs nowhere and has a
// handoff listener to hand connections over to. Both are closed when the
// test ends.
func newTestLoop(t *testing.T) *loop {
	t.Helper()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(ep) })
	f := &Front{log: slog.New(slog.DiscardHandler), live: map[*dataplane.Set]int{}, sets: map[*dataplane.Set]bool{},
		handoffs: newHandoffListener()}
	t.Cleanup(func() { f.handoffs.Close() })
	return &loop{f: f, epoll: ep, listener: -1, epoch: time.Now(), clients: map[int]*client{}, channels: map[int]*channel{},
		sides: map[int]*side{}, groups: map[*dataplane.Set]*group{}, buf: make([]byte, 64<<10)}
}
