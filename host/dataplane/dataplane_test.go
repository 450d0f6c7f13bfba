package dataplane

import (
	"context"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// vm is the guest side of a set: the channel socket init holds.
type vm struct {
	t     *testing.T
	guest *contract.Channels
	set   *Set
}

func newVM(t *testing.T) *vm {
	t.Helper()
	host, guestFile, err := contract.ChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	guest, err := contract.NewChannels(guestFile)
	if err != nil {
		t.Fatal(err)
	}
	set := New(host, Options{})
	t.Cleanup(func() { guest.Close(); set.Close() })
	return &vm{t: t, guest: guest, set: set}
}

// worker starts a fake worker (a server session answering each request
// with its own name) and passes its channel as init does.
func (v *vm) worker(id, start uint32) *mux.Session {
	v.t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		v.t.Fatal(err)
	}
	workerFile, hostEnd := os.NewFile(uintptr(fds[0]), "worker"), os.NewFile(uintptr(fds[1]), "host")
	conn, err := net.FileConn(workerFile)
	workerFile.Close()
	if err != nil {
		v.t.Fatal(err)
	}
	name := []byte{byte('0' + id)}
	sess := mux.Server(conn, mux.Config{Handler: func(st *mux.Stream) {
		_, _ = io.Copy(io.Discard, st)
		_ = st.WriteResponse(&message.ResponseHead{Status: 200}, name, true)
	}})
	v.t.Cleanup(func() { sess.Close() })
	if err := v.guest.Send(contract.WorkerChannel{Worker: id, Start: start}, hostEnd); err != nil {
		v.t.Fatal(err)
	}
	hostEnd.Close()
	return sess
}

// waitLive waits until the set has exactly the workers want (by number).
func (v *vm) waitLive(want ...uint32) {
	v.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := v.set.Workers()
		same := len(got) == len(want)
		for i := range got {
			same = same && got[i].Worker == want[i]
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("live workers %+v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ask sends one request on sess and returns the worker's name.
func ask(t *testing.T, sess *mux.Session) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Requests go to the worker with the fewest outstanding: picks that are
// not done yet count, done ones no longer.
func TestPickLeastOutstanding(t *testing.T) {
	v := newVM(t)
	if sess, done := v.set.Pick(); sess != nil {
		t.Fatal("a session picked from an empty set")
	} else {
		done()
	}
	v.worker(1, 1)
	v.worker(2, 1)
	v.waitLive(1, 2)

	var got []string
	var dones []func()
	for range 4 {
		sess, done := v.set.Pick()
		got = append(got, ask(t, sess))
		dones = append(dones, done)
	}
	if want := "1212"; got[0]+got[1]+got[2]+got[3] != want {
		t.Fatalf("picked %v, want %s", got, want)
	}
	// Worker 1's two done: it has none outstanding, worker 2 still two.
	dones[0]()
	dones[2]()
	for range 2 {
		sess, done := v.set.Pick()
		if name := ask(t, sess); name != "1" {
			t.Fatalf("picked worker %s while worker 1 had fewer outstanding", name)
		}
		defer done()
	}
}

// A worker session that ends leaves the set, the other goes on; the
// worker's next start (a higher Start) joins again, and an older start's
// channel arriving late is refused.
func TestDeadWorkerLeavesAndItsRestartJoins(t *testing.T) {
	v := newVM(t)
	w1 := v.worker(1, 1)
	v.worker(2, 1)
	v.waitLive(1, 2)

	w1.Close() // the worker died
	v.waitLive(2)
	for range 3 {
		sess, done := v.set.Pick()
		if name := ask(t, sess); name != "2" {
			t.Fatalf("a request went to worker %s", name)
		}
		done()
	}
	v.worker(1, 2)
	v.waitLive(1, 2)
	stale := v.worker(1, 1)
	select {
	case <-stale.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a stale channel's session was kept")
	}
	if ws := v.set.Workers(); len(ws) != 2 || ws[0].Start != 2 {
		t.Fatalf("live %+v", ws)
	}
}

// A worker's GOAWAY (it is stopping) takes it out of the set at once,
// while its session finishes; the set's Close ends every session.
func TestGoAwayLeavesAndCloseEndsAll(t *testing.T) {
	v := newVM(t)
	w1 := v.worker(1, 1)
	w2 := v.worker(2, 1)
	v.waitLive(1, 2)
	if err := w1.GoAway(frame.CodeNoError, "worker stopping"); err != nil {
		t.Fatal(err)
	}
	v.waitLive(2)
	v.set.Close()
	if v.set.Len() != 0 {
		t.Fatal("sessions left after Close")
	}
	for _, w := range []*mux.Session{w1, w2} {
		select {
		case <-w.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("a worker's session outlived the set")
		}
	}
}
