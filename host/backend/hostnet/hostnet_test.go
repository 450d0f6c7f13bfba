package hostnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ferry-vm/ferry/host/backend/firewall"
)

func TestParsePrefix(t *testing.T) {
	for _, good := range []string{"2001:db8:1:2::/64", "2001:db8::/48", "2001:db8:0:0:0:0:0:0/115"} {
		if _, err := ParsePrefix(good); err != nil {
			t.Errorf("%s: %v", good, err)
		}
	}
	for bad, why := range map[string]string{
		"2001:db8::":            "not an IPv6 prefix",
		"2001:db8::/129":        "not an IPv6 prefix",
		"10.0.0.0/8":            "not an IPv6 prefix",
		"::ffff:10.0.0.0/104":   "not an IPv6 prefix",
		"2001:db8:1:2::1/64":    "the prefix is 2001:db8:1:2::/64",
		"2001:db8::/116":        "too small",
		"2001:db8::/124":        "too small",
		"fe80::/64":             "not a routable prefix",
		"ff02::/64":             "not a routable prefix",
		"::/0":                  "not a routable prefix",
		"2001:db8::/64, banana": "not an IPv6 prefix",
	} {
		_, err := ParsePrefix(bad)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: want %q, got %v", bad, why, err)
		}
	}
	// The node's VMs fit, and the host's first sub-prefix too.
	if SlotsPerNode+1 > 1<<(SubPrefixBits-MaxPrefixBits) {
		t.Fatal("MaxPrefixBits leaves no room for SlotsPerNode sub-prefixes")
	}
}

// Each VM index of a node has its own /124 of the prefix, the first one
// being the host's; indexes of other slots map to the same ones (every
// node has its own prefix).
func TestSubPrefix(t *testing.T) {
	p := netip.MustParsePrefix("2001:db8:1:2::/64")
	for n, want := range map[uint64]string{0: "2001:db8:1:2::10/124", 1: "2001:db8:1:2::20/124", 255: "2001:db8:1:2::1000/124", 256: "2001:db8:1:2::10/124"} {
		if got := SubPrefix(p, n).String(); got != want {
			t.Errorf("VM %d: %s, want %s", n, got, want)
		}
	}
	small := netip.MustParsePrefix("2001:db8::/115")
	seen := map[netip.Prefix]bool{}
	for n := uint64(0); n < SlotsPerNode; n++ {
		s := SubPrefix(small, n)
		if !small.Contains(s.Addr()) || seen[s] || s.Addr() == small.Addr() {
			t.Fatalf("VM %d: %s", n, s)
		}
		seen[s] = true
	}
	h := New(Options{IPv6Prefix: p})
	nw := h.Addressing(1)
	if nw.HostIPv6 != "2001:db8:1:2::21/124" || nw.GuestIPv6 != "2001:db8:1:2::22/124" || nw.GuestIPv4 != "10.200.0.10/30" {
		t.Errorf("addressing %+v", nw)
	}
	if nw := New(Options{}).Addressing(1); nw.GuestIPv6 != "fd00:f3:7:2::2/64" {
		t.Errorf("private addressing %+v", nw)
	}
}

func TestResolvers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stub := write("stub", "nameserver 127.0.0.53\noptions edns0\n")
	real := write("real", "# upstream\nnameserver 192.0.2.53\nnameserver ::1\nnameserver 2001:db8::53\nsearch example\n")
	got, err := resolversFrom([]string{stub, real})
	want := []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := resolversFrom([]string{stub, filepath.Join(dir, "missing")}); err == nil || !strings.Contains(err.Error(), "--dns") {
		t.Fatalf("only loopback resolvers: %v", err)
	}
	if got, err := ParseDNS(" 192.0.2.1, 2001:db8::1 ,"); err != nil || len(got) != 2 {
		t.Fatalf("ParseDNS: %v %v", got, err)
	}
	if _, err := ParseDNS("192.0.2.1,resolver"); err == nil {
		t.Fatal("a name accepted as a resolver")
	}
}

// inNetns runs f on a locked thread inside a new network namespace,
// which goes away after.
func inNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("new network namespace: %v", err)
	}
	defer func() {
		ns.Close()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread() // else the thread ends with the goroutine
		}
	}()
	f()
}

// A node with a routed prefix: Open sets the sysctls, removes what a dead
// agent left and opens the firewall; a tap gets its /124, the uplink
// answers for the VM's address, and Remove takes both away; a VM the
// firewall refuses leaves nothing; Close deletes the firewall's table.
func TestHostLinksInANamespace(t *testing.T) {
	inNetns(t, func() {
		uplink := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}
		if err := netlink.LinkAdd(uplink); err != nil {
			t.Fatal(err)
		}
		up, _ := netlink.LinkByName("up0")
		prefix := netip.MustParsePrefix("2001:db8:1:2::/64")
		// What a dead agent left: a proxy entry in the prefix, one
		// outside it (not ours), and a link of this node's.
		for _, a := range []string{"2001:db8:1:2::22", "2001:db8:9::22"} {
			if err := proxyNeighbour(up, netip.MustParseAddr(a), false); err != nil {
				t.Fatal(err)
			}
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: LinkName(3)}, PeerName: "stale3"}); err != nil {
			t.Fatal(err)
		}

		h := New(Options{IPv6Prefix: prefix, Uplink: "up0", DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")}})
		if err := h.Open(); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/up0/proxy_ndp"} {
			if v, _ := os.ReadFile("/proc/sys/net/" + s); strings.TrimSpace(string(v)) != "1" {
				t.Errorf("%s is %q", s, v)
			}
		}
		if got := proxies(t, up); !reflect.DeepEqual(got, []string{"2001:db8:9::22"}) {
			t.Errorf("after Open, proxy entries %v", got)
		}
		if _, err := netlink.LinkByName(LinkName(3)); err == nil {
			t.Error("a stale link of the node's is left")
		}

		forward := []firewall.Forward{{Proto: "tcp", HostPort: 8022, VMPort: 22}}
		link, tap, err := h.Tap(1, firewall.VM{Internet: true, AllowedPorts: []firewall.Port{{Proto: "tcp", Port: 80}}, Forwards: forward})
		if err != nil {
			t.Fatal(err)
		}
		defer tap.Close()
		// A second VM forwarding the same host port is refused, and
		// nothing of its link is left.
		if _, _, err := h.Tap(2, firewall.VM{Forwards: forward}); err == nil {
			t.Fatal("a second VM forwarding the same host port was linked")
		}
		if _, err := netlink.LinkByName(LinkName(2)); err == nil {
			t.Error("the refused VM's tap is left")
		}
		if link.Network.GuestIPv6 != "2001:db8:1:2::22/124" || !reflect.DeepEqual(link.Network.DNS, []string{"192.0.2.53"}) {
			t.Errorf("network %+v", link.Network)
		}
		if got := proxies(t, up); !reflect.DeepEqual(got, []string{"2001:db8:1:2::22", "2001:db8:9::22"}) {
			t.Errorf("with the VM, proxy entries %v", got)
		}
		routes, _ := netlink.RouteGet(netip.MustParseAddr("2001:db8:1:2::22").AsSlice())
		if len(routes) != 1 || routes[0].LinkIndex != linkIndex(t, link.Name) {
			t.Errorf("route to the VM: %+v", routes)
		}
		if err := link.Remove(); err != nil {
			t.Fatal(err)
		}
		if got := proxies(t, up); !reflect.DeepEqual(got, []string{"2001:db8:9::22"}) {
			t.Errorf("after Remove, proxy entries %v", got)
		}
		if _, err := netlink.LinkByName(link.Name); err == nil {
			t.Error("the tap is left")
		}
		if !hasFerryTable(t) {
			t.Error("no firewall table while the node is open")
		}
		if err := h.Close(); err != nil || hasFerryTable(t) {
			t.Errorf("Close: %v; the table left: %v", err, hasFerryTable(t))
		}
	})
}

// A node without an uplink links VMs reachable from the host; with a
// prefix, it needs one. A VM without internet gets no resolver (it could
// not reach it).
func TestHostWithoutUplink(t *testing.T) {
	inNetns(t, func() {
		if err := New(Options{IPv6Prefix: netip.MustParsePrefix("2001:db8::/64")}).Open(); err == nil || !strings.Contains(err.Error(), "needs an uplink") {
			t.Fatalf("prefix without uplink: %v", err)
		}
		if err := New(Options{Uplink: "nope0"}).Open(); err == nil || !strings.Contains(err.Error(), "nope0") {
			t.Fatalf("missing uplink: %v", err)
		}
		h := New(Options{DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")}})
		link, tap, err := h.Tap(0, firewall.VM{})
		if err != nil {
			t.Fatal(err)
		}
		tap.Close()
		if link.Network.GuestIPv6 != "fd00:f3:7:1::2/64" || link.Network.DNS != nil {
			t.Errorf("network %+v", link.Network)
		}
		link.Remove()
	})
}

func proxies(t *testing.T, uplink netlink.Link) []string {
	t.Helper()
	list, err := netlink.NeighProxyList(uplink.Attrs().Index, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range list {
		out = append(out, n.IP.String())
	}
	slices.Sort(out)
	return out
}

// hasFerryTable reports whether the firewall's table exists in the
// caller's namespace.
func hasFerryTable(t *testing.T) bool {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == firewall.TableName(0) {
			return true
		}
	}
	return false
}

func linkIndex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}
