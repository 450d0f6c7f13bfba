package relay

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// TCP states of the kernel's TCP_INFO (include/net/tcp_states.h).
const (
	tcpClose     = 7 // reset, or fully closed
	tcpCloseWait = 8 // the peer sent FIN
)

// clientGone reports whether the peer of conn has closed or reset its TCP
// connection, without reading from it (data the relay is not ready for may
// wait in front of the FIN). A websocket client ends with a close frame;
// one that sent FIN has left. Connections that are not TCP, or whose state
// cannot be read, count as present.
func clientGone(conn net.Conn) bool {
	if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = tc.NetConn() // TLS
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var state uint8
	var infoErr error
	if err := raw.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		info, infoErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if infoErr == nil {
			state = info.State
		}
	}); err != nil {
		return true // closed here already
	}
	return infoErr == nil && (state == tcpCloseWait || state == tcpClose)
}
