package daemon

import (
	"net"
	"testing"
)

// A public listener on every address is advertised with the host of the
// node's cluster address; one on an address of its own, as it is.
func TestPublicAddress(t *testing.T) {
	for _, c := range []struct{ listen, cluster, want string }{
		{"0.0.0.0:8080", "10.0.0.5:9000", "10.0.0.5:8080"},
		{"[::]:8080", "[2001:db8::5]:9000", "[2001:db8::5]:8080"},
		{"192.0.2.7:8080", "10.0.0.5:9000", "192.0.2.7:8080"},
		{"[2001:db8::7]:80", "10.0.0.5:9000", "[2001:db8::7]:80"},
		{"0.0.0.0:8080", "not an address", "0.0.0.0:8080"},
	} {
		addr, err := net.ResolveTCPAddr("tcp", c.listen)
		if err != nil {
			t.Fatal(err)
		}
		if got := publicAddress(addr, c.cluster); got != c.want {
			t.Errorf("publicAddress(%s, %s) = %s, want %s", c.listen, c.cluster, got, c.want)
		}
	}
}
