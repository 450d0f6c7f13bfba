package contract

import (
	"errors"
	"io"
	"os"
	"syscall"
	"testing"
)

// A worker's channel passed over the channel socket arrives with its name
// and is the same connection: bytes written at the worker's end are read
// at the host's.
func TestChannelsPassAConnection(t *testing.T) {
	host, guestFile, err := ChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	guest, err := NewChannels(guestFile)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()

	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	workerEnd, hostEnd := os.NewFile(uintptr(fds[0]), "worker"), os.NewFile(uintptr(fds[1]), "host")
	defer workerEnd.Close()
	if err := guest.Send(WorkerChannel{Worker: 2, Start: 7}, hostEnd); err != nil {
		t.Fatal(err)
	}
	hostEnd.Close() // init's copy: the host's is the only one left

	ch, f, err := host.Receive()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ch != (WorkerChannel{Worker: 2, Start: 7}) {
		t.Fatalf("got %+v", ch)
	}
	flags, err := unixFcntl(int(f.Fd()))
	if err != nil || flags&syscall.FD_CLOEXEC == 0 {
		t.Fatalf("received descriptor is not close-on-exec (%v)", err)
	}
	if _, err := workerEnd.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(f, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q %v", buf, err)
	}
	// The worker's end closing is seen at the host's: init kept no copy.
	workerEnd.Close()
	if n, err := f.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the worker closed: %d %v", n, err)
	}
}

// A message without a descriptor, or of the wrong size, is refused, the
// descriptors it carried closed, and the socket goes on; a closed peer is
// io.EOF.
func TestChannelsRefuseMalformedMessages(t *testing.T) {
	host, guestFile, err := ChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	guest := int(guestFile.Fd())

	if err := syscall.Sendmsg(guest, make([]byte, channelMessageSize), nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := host.Receive(); !errors.Is(err, ErrBadChannel) {
		t.Fatalf("no descriptor: %v", err)
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	if err := syscall.Sendmsg(guest, []byte("short"), syscall.UnixRights(int(w.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, _, err := host.Receive(); !errors.Is(err, ErrBadChannel) {
		t.Fatalf("short message: %v", err)
	}
	// The pipe's write end travelled and was closed by Receive: the
	// read end sees its end.
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("the refused descriptor was kept open: %d %v", n, err)
	}
	guestFile.Close()
	if _, _, err := host.Receive(); err != io.EOF {
		t.Fatalf("after the guest closed: %v", err)
	}
}

func unixFcntl(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
