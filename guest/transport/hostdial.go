package transport

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/mdlayher/vsock"
)

// HostCID is the vsock context id of the host, as seen from a guest.
const HostCID = 2

// HostDialer opens connections the guest starts toward the host: vsock
// CID 2 on a port, or, with UDS set, the unix socket UDS_PORT, which is
// where Firecracker delivers a guest's connection to host port PORT when
// its vsock device's uds_path is UDS (init's -host-uds flag: the same
// convention without a VM).
type HostDialer struct {
	// UDS, if set, replaces vsock with unix sockets named UDS_PORT.
	UDS string
}

// Dial connects to the host's port.
func (d HostDialer) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	if d.UDS != "" {
		path := d.UDS + "_" + strconv.FormatUint(uint64(port), 10)
		var nd net.Dialer
		c, err := nd.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, fmt.Errorf("host port %d (unix socket %s): %w", port, path, err)
		}
		return c, nil
	}
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := vsock.Dial(HostCID, port, nil)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("host vsock port %d: %w", port, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// String names where d connects.
func (d HostDialer) String() string {
	if d.UDS != "" {
		return "unix:" + d.UDS + "_PORT"
	}
	return "vsock:2:PORT"
}
