package contract

// Worker channels (protocol/SPEC.md §11): where the transport can carry
// more than one connection (the sandbox's unix sockets), each ASGI worker
// gets a connection of its own to the host, its data channel, and the
// host sends the worker's requests there directly instead of through
// init. init makes a socket pair at each start of a worker, gives the
// worker one end and passes the other to the host over the channel
// socket: a SOCK_SEQPACKET unix socket the backend gives init (boot
// parameter ferry.channels=N, its file descriptor). Each message is one
// WorkerChannel with exactly one descriptor attached (SCM_RIGHTS). The
// host knows which VM a channel belongs to by the socket it came on: no
// path, no identity to check.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// WorkerChannel names the data channel that travels with it.
type WorkerChannel struct {
	// Worker is the worker's number in init's pool, from 1.
	Worker uint32
	// Start counts the worker's starts, from 1: a restarted worker's
	// channel replaces the one with a lower Start.
	Start uint32
}

// channelMessageSize is the encoded size of a WorkerChannel: Worker and
// Start, big-endian.
const channelMessageSize = 8

// Channels is one end of a channel socket.
type Channels struct {
	conn *net.UnixConn
}

// NewChannels takes f, a SOCK_SEQPACKET unix socket, as a channel socket
// (f is closed: the Channels own a copy).
func NewChannels(f *os.File) (*Channels, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("channel socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("channel socket: a %T, not a unix socket", c)
	}
	return &Channels{conn: uc}, nil
}

// ChannelPair returns the two ends of a new channel socket: the host's
// and the guest's (close-on-exec, as the backend passes it on
// explicitly).
func ChannelPair() (host *Channels, guest *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("channel socket pair: %w", err)
	}
	host, err = NewChannels(os.NewFile(uintptr(fds[0]), "channels"))
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	return host, os.NewFile(uintptr(fds[1]), "guest-channels"), nil
}

// Send passes conn, a worker's data channel, with its name. The caller
// keeps conn and closes it once sent.
func (c *Channels) Send(ch WorkerChannel, conn *os.File) error {
	var msg [channelMessageSize]byte
	binary.BigEndian.PutUint32(msg[0:], ch.Worker)
	binary.BigEndian.PutUint32(msg[4:], ch.Start)
	if _, _, err := c.conn.WriteMsgUnix(msg[:], syscall.UnixRights(int(conn.Fd())), nil); err != nil {
		return fmt.Errorf("passing worker %d's channel: %w", ch.Worker, err)
	}
	return nil
}

// ErrBadChannel is returned (wrapped) by Receive for a message that is
// not a WorkerChannel with one descriptor; the socket stays usable.
var ErrBadChannel = errors.New("malformed worker channel message")

// Receive waits for the next channel. The descriptor is close-on-exec.
// A malformed message is an error wrapping ErrBadChannel (any descriptors
// it carried are closed); an ended socket (a read of nothing: the peer closed its end) is
// io.EOF, a closed one the socket's error.
func (c *Channels) Receive() (WorkerChannel, *os.File, error) {
	var msg [channelMessageSize + 1]byte
	oob := make([]byte, syscall.CmsgSpace(4*4)) // room for a few, to close extras
	n, oobn, flags, _, err := c.conn.ReadMsgUnix(msg[:], oob)
	if errors.Is(err, io.EOF) {
		return WorkerChannel{}, nil, io.EOF
	}
	if err != nil {
		return WorkerChannel{}, nil, err
	}
	fds, perr := parseRights(oob[:oobn])
	switch {
	case n == 0 && oobn == 0:
		return WorkerChannel{}, nil, io.EOF
	case perr != nil:
		err = perr
	case flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0:
		err = errors.New("truncated")
	case n != channelMessageSize:
		err = fmt.Errorf("%d bytes, want %d", n, channelMessageSize)
	case len(fds) != 1:
		err = fmt.Errorf("%d descriptors, want 1", len(fds))
	}
	if err != nil {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		return WorkerChannel{}, nil, fmt.Errorf("%w: %w", ErrBadChannel, err)
	}
	ch := WorkerChannel{Worker: binary.BigEndian.Uint32(msg[0:]), Start: binary.BigEndian.Uint32(msg[4:])}
	return ch, os.NewFile(uintptr(fds[0]), fmt.Sprintf("worker-%d-channel", ch.Worker)), nil
}

// parseRights returns the descriptors of SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		got, err := syscall.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// Close closes this end; a Receive waiting on it returns.
func (c *Channels) Close() error { return c.conn.Close() }
