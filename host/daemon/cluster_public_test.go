package daemon

import (
	"net"
	"strings"
	"testing"
)

// A public listener on every address is advertised with the host of the
// node's cluster address; one on an address of its own, as it is; one
// the other nodes cannot reach, not at all.
func TestPublicAddress(t *testing.T) {
	for _, c := range []struct{ listen, cluster, want, err string }{
		{"0.0.0.0:8080", "10.0.0.5:9000", "10.0.0.5:8080", ""},
		{"[::]:8080", "[2001:db8::5]:9000", "[2001:db8::5]:8080", ""},
		{"[::]:8080", "10.0.0.5:9000", "10.0.0.5:8080", ""},
		{"[::]:8080", "node2.example:9000", "node2.example:8080", ""},
		{"192.0.2.7:8080", "10.0.0.5:9000", "192.0.2.7:8080", ""},
		{"[2001:db8::7]:80", "10.0.0.5:9000", "[2001:db8::7]:80", ""},
		{"127.0.0.1:8080", "127.0.0.1:9000", "127.0.0.1:8080", ""},
		{"127.0.0.1:8080", "10.0.0.5:9000", "", "on loopback"},
		{"0.0.0.0:8080", "[2001:db8::5]:9000", "", "IPv4 only"},
		{"0.0.0.0:8080", "not an address", "", "cluster address"},
		{"127.0.0.1:8080", "node1.internal:9000", "", "on loopback"},
		{"127.0.0.1:8080", "localhost:9000", "127.0.0.1:8080", ""},
	} {
		addr, err := net.ResolveTCPAddr("tcp", c.listen)
		if err != nil {
			t.Fatal(err)
		}
		got, err := publicAddress(addr, c.cluster)
		if got != c.want || (c.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("publicAddress(%s, %s) = %q, %v; want %q, an error with %q", c.listen, c.cluster, got, err, c.want, c.err)
		}
	}
	if _, err := publicAddress(&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, "10.0.0.5:9000"); err == nil {
		t.Errorf("a unix listener advertised")
	}
}
