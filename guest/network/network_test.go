package network

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// inNewNetns runs f on a locked thread inside a fresh network namespace.
func inNewNetns(t *testing.T, f func()) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace (CI runs tests as root)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread goes back to its own namespace before it is
		// unlocked; one that cannot stays locked and ends with the
		// goroutine.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			t.Error(err)
			return
		}
		defer orig.Close()
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer ns.Close()
		f()
	}()
	<-done
}

func TestApplyConfiguresBothFamilies(t *testing.T) {
	inNewNetns(t, func() {
		if err := LoopbackUp(); err != nil {
			t.Error(err)
			return
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "host0"}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Errorf("veth: %v", err)
			return
		}
		n := &contract.Network{
			IPv4: &contract.Address{Address: "10.7.0.2/24", Gateway: "10.7.0.1"},
			IPv6: &contract.Address{Address: "fd07::2/64", Gateway: "fd07::1"},
			MTU:  1400,
		}
		if err := Apply(n); err != nil {
			t.Errorf("apply: %v", err)
			return
		}
		link, _ := netlink.LinkByName("eth0")
		if link.Attrs().MTU != 1400 {
			t.Errorf("mtu %d", link.Attrs().MTU)
		}
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
		var got []string
		for _, a := range addrs {
			got = append(got, a.IPNet.String())
		}
		joined := strings.Join(got, " ")
		if !strings.Contains(joined, "10.7.0.2/24") || !strings.Contains(joined, "fd07::2/64") {
			t.Errorf("addresses %v", got)
		}
		routes, _ := netlink.RouteList(link, netlink.FAMILY_ALL)
		var v4, v6 bool
		for _, r := range routes {
			if r.Gw != nil && r.Gw.Equal(net.ParseIP("10.7.0.1")) {
				v4 = true
			}
			if r.Gw != nil && r.Gw.Equal(net.ParseIP("fd07::1")) {
				v6 = true
			}
		}
		if !v4 || !v6 {
			t.Errorf("default routes v4=%v v6=%v in %v", v4, v6, routes)
		}
		// Re-applying is harmless (replace, not add).
		if err := Apply(n); err != nil {
			t.Errorf("second apply: %v", err)
		}
	})
}

func TestMissingInterfaceNamesTheField(t *testing.T) {
	inNewNetns(t, func() {
		err := Apply(&contract.Network{Interface: "eth9", IPv4: &contract.Address{Address: "10.0.0.2/24"}})
		nerr, ok := err.(*contract.ConfigError)
		if !ok || nerr.Field != "network.interface" {
			t.Errorf("got %v", err)
		}
	})
}

func TestResolvConfAndHosts(t *testing.T) {
	root := t.TempDir()
	if err := WriteResolvConf(root, []string{"9.9.9.9", "2620:fe::fe"}); err != nil {
		t.Fatal(err)
	}
	if err := WriteHosts(root, "hello"); err != nil {
		t.Fatal(err)
	}
	rc, _ := os.ReadFile(filepath.Join(root, "etc/resolv.conf"))
	hosts, _ := os.ReadFile(filepath.Join(root, "etc/hosts"))
	if !strings.Contains(string(rc), "nameserver 2620:fe::fe\n") || !strings.Contains(string(hosts), "127.0.1.1\thello\n") {
		t.Fatalf("resolv.conf %q hosts %q", rc, hosts)
	}
}
