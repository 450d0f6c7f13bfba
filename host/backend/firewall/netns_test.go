package firewall

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// These tests build, in network namespaces they create, a small world:
//
//	outside (eth0 10.99.0.2/24 fd99::2/64, routes to the VMs via host)
//	   |  veth
//	host    (up0 10.99.0.1/24 fd99::1/64: the uplink; fy0-1 10.200.0.1/30
//	   |     fd00:f3:7:1::1/64; forwarding on; Ferry's table here)
//	   |  veth fy0-1
//	vm      (eth0 10.200.0.2/30 fd00:f3:7:1::2/64, default routes via host)
//
// and prove the rules with real TCP connections. Every server answers
// with the address it sees the client at. Nothing touches the machine's
// own namespace.

const (
	outside4 = "10.99.0.2"
	outside6 = "fd99::2"
	uplink4  = "10.99.0.1"
	vm4      = "10.200.0.2"
	vm6      = "fd00:f3:7:1::2"
)

// dropWait is how long a connection attempt waits before it counts as
// dropped. A connection that is allowed completes in milliseconds here.
const dropWait = 1500 * time.Millisecond

// testNS is a network namespace the test made, held by a file
// descriptor (it ends when the test closes it), with a netlink handle in
// it.
type testNS struct {
	fd netns.NsHandle
	nl *netlink.Handle
}

func newNS(t *testing.T) *testNS {
	t.Helper()
	var fd netns.NsHandle
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		// netns.New moves the thread there: it goes back before it is
		// unlocked (see do).
		runtime.LockOSThread()
		orig, gerr := netns.Get()
		if gerr != nil {
			runtime.UnlockOSThread()
			err = gerr
			return
		}
		defer orig.Close()
		fd, err = netns.New()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	<-done
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { fd.Close() })
	nl, err := netlink.NewHandleAt(fd)
	if err != nil {
		t.Fatalf("netlink in the namespace: %v", err)
	}
	t.Cleanup(nl.Close)
	n := &testNS{fd: fd, nl: nl}
	// No duplicate address detection on the links to come, or their
	// link-local addresses stay tentative for a second or two and the
	// first IPv6 connections wait on neighbour discovery.
	n.sysctl(t, "net.ipv6.conf.all.accept_dad", "0")
	n.sysctl(t, "net.ipv6.conf.default.accept_dad", "0")
	n.up(t, "lo")
	return n
}

// do runs fn on a thread that has entered the namespace; sockets fn
// creates stay in it. The thread goes back to its own namespace before it
// is unlocked, so no other goroutine runs in the test's; one that cannot
// go back stays locked and ends with the goroutine. (Leaving threads
// behind on purpose would not do: the process's main thread, which Go
// parks instead of ending, would keep a namespace for the whole run.)
func (n *testNS) do(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			panic(err)
		}
		defer orig.Close()
		if err := netns.Set(n.fd); err != nil {
			panic(err)
		}
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		// Never let a test's traffic out of its namespaces.
		if here, err := netns.Get(); err != nil || !here.Equal(n.fd) || here.Equal(rootNS) {
			panic(fmt.Sprintf("thread not in the test's namespace: %v %v", here, err))
		}
		fn()
	}()
	<-done
}

func (n *testNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func (n *testNS) up(t *testing.T, name string) {
	t.Helper()
	if err := n.nl.LinkSetUp(n.link(t, name)); err != nil {
		t.Fatalf("link %s up: %v", name, err)
	}
}

// veth makes a veth pair: name here, peer (eth0) in other.
func (n *testNS) veth(t *testing.T, name string, other *testNS) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(other.fd))}
	if err := n.nl.LinkAdd(v); err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
	n.up(t, name)
	other.up(t, "eth0")
}

// addr adds prefixes to a link.
func (n *testNS) addr(t *testing.T, name string, prefixes ...string) {
	t.Helper()
	for _, p := range prefixes {
		a, err := netlink.ParseAddr(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.nl.AddrAdd(n.link(t, name), a); err != nil {
			t.Fatalf("address %s on %s: %v", p, name, err)
		}
	}
}

// route adds a route to dst via gw.
func (n *testNS) route(t *testing.T, dst, gw string) {
	t.Helper()
	_, d, err := net.ParseCIDR(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.nl.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(gw)}); err != nil {
		t.Fatalf("route %s via %s: %v", dst, gw, err)
	}
}

// sysctl sets a sysctl of the namespace (net.* ones are per namespace:
// the thread's, when it opens the file).
func (n *testNS) sysctl(t *testing.T, name, value string) {
	t.Helper()
	var err error
	n.do(func() {
		err = os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value), 0)
	})
	if err != nil {
		t.Fatalf("sysctl %s: %v", name, err)
	}
}

// rootNS is the test process's own namespace, opened once.
var rootNS, _ = netns.GetFromPath("/proc/self/ns/net")

// world is the three namespaces.
type world struct {
	host, outside, vm *testNS
}

func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and nftables tables in them")
	}
}

func newWorld(t *testing.T) *world {
	t.Helper()
	requireNetns(t)
	w := &world{host: newNS(t), outside: newNS(t), vm: newNS(t)}
	h, o, v := w.host, w.outside, w.vm
	h.veth(t, "up0", o)
	h.veth(t, "fy0-1", v)
	h.addr(t, "up0", uplink4+"/24", "fd99::1/64")
	h.addr(t, "fy0-1", "10.200.0.1/30", "fd00:f3:7:1::1/64")
	h.sysctl(t, "net.ipv4.ip_forward", "1")
	h.sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	o.addr(t, "eth0", outside4+"/24", outside6+"/64")
	o.route(t, "10.200.0.0/16", uplink4)
	o.route(t, "fd00:f3:7::/48", "fd99::1")
	v.addr(t, "eth0", vm4+"/30", vm6+"/64")
	v.route(t, "0.0.0.0/0", "10.200.0.1")
	v.route(t, "::/0", "fd00:f3:7:1::1")
	// Servers that answer with the client's address: outside on 7000, the
	// VM on 8080 and 8081 (dual-stack listeners).
	serve(t, o, 7000)
	serve(t, v, 8080)
	serve(t, v, 8081)
	return w
}

// serve listens on [::]:port inside n and answers each connection with
// the address it sees the client at and its port: "client@port".
func serve(t *testing.T, n *testNS, port int) {
	t.Helper()
	var ln net.Listener
	var err error
	n.do(func() { ln, err = net.Listen("tcp", ":"+strconv.Itoa(port)) })
	if err != nil {
		t.Fatalf("listen on %d: %v", port, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			addr := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()
			fmt.Fprintf(c, "%s@%d\n", addr, port)
			c.Close()
		}
	}()
}

// dial connects from inside n to addr and returns the address the server
// saw; a connection that does not complete within dropWait returns a
// timeout error.
func (n *testNS) dial(addr string) (string, error) {
	var seen string
	var err error
	n.do(func() {
		var c net.Conn
		c, err = net.DialTimeout("tcp", addr, dropWait)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		seen, err = bufio.NewReader(c).ReadString('\n')
		seen = strings.TrimSpace(seen)
	})
	return seen, err
}

// reaches asserts that a connection from n to addr completes and that
// the server (listening on addr's port) sees the client at client.
func reaches(t *testing.T, n *testNS, addr, client string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	answers(t, n, addr, client+"@"+port)
}

// answers asserts that a connection from n to addr completes and that
// the server answers want ("client@port").
func answers(t *testing.T, n *testNS, addr, want string) {
	t.Helper()
	seen, err := n.dial(addr)
	if err != nil {
		t.Errorf("connect to %s: %v; want a connection", addr, err)
		return
	}
	if seen != want {
		t.Errorf("connect to %s: the server answers %s; want %s", addr, seen, want)
	}
}

// dropped asserts that connections from n to each of addrs time out:
// their packets are dropped (a refusal would mean they got through). The
// attempts run together, so the test waits dropWait once.
func dropped(t *testing.T, n *testNS, addrs ...string) {
	t.Helper()
	errs := make([]error, len(addrs))
	seen := make([]string, len(addrs))
	var wg sync.WaitGroup
	for i, addr := range addrs {
		wg.Go(func() { seen[i], errs[i] = n.dial(addr) })
	}
	wg.Wait()
	for i, err := range errs {
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("connect to %s: seen %q, err %v; want it dropped (a timeout)", addrs[i], seen[i], err)
		}
	}
}

// refused asserts that a connection from n to addr is refused: it got
// through, and nothing listens where it arrived.
func refused(t *testing.T, n *testNS, addr string) {
	t.Helper()
	if seen, err := n.dial(addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to %s: seen %q, err %v; want connection refused", addr, seen, err)
	}
}

func (w *world) open(t *testing.T) *Firewall {
	t.Helper()
	return w.openSlot(t, 0)
}

// openSlot opens the firewall of the agent in node slot slot.
func (w *world) openSlot(t *testing.T, slot int) *Firewall {
	t.Helper()
	f, err := Open(Options{Uplink: "up0", NetNS: int(w.host.fd), Slot: slot})
	if errors.Is(err, syscall.EPROTONOSUPPORT) {
		t.Skipf("the kernel has no nftables (nf_tables): %v", err)
	}
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestEgress(t *testing.T) {
	w := newWorld(t)
	f := w.open(t)
	out4, out6 := net.JoinHostPort(outside4, "7000"), net.JoinHostPort(outside6, "7000")

	// A Ferry link nobody registered forwards nothing.
	dropped(t, w.vm, out4, out6)

	vm := VM{Link: "fy0-1", IPv4: netip.MustParseAddr(vm4), IPv6: netip.MustParseAddr(vm6), Internet: true}
	if err := f.AddVM(vm); err != nil {
		t.Fatal(err)
	}
	reaches(t, w.vm, out4, uplink4) // masqueraded to the uplink's address
	reaches(t, w.vm, out6, vm6)     // routed as it is

	// The same link again without Internet replaces the entry.
	vm.Internet = false
	if err := f.AddVM(vm); err != nil {
		t.Fatal(err)
	}
	dropped(t, w.vm, out4, out6)
}

func TestInbound(t *testing.T) {
	w := newWorld(t)
	f := w.open(t)
	vm := VM{
		Link: "fy0-1", IPv4: netip.MustParseAddr(vm4), IPv6: netip.MustParseAddr(vm6),
		AllowedPorts: []Port{{"tcp", 8080}, {"udp", 8081}},
		Forwards:     []Forward{{Proto: "tcp", HostPort: 9000, VMPort: 8081}},
	}
	if err := f.AddVM(vm); err != nil {
		t.Fatal(err)
	}
	reaches(t, w.outside, net.JoinHostPort(vm6, "8080"), outside6)
	reaches(t, w.outside, net.JoinHostPort(vm4, "8080"), outside4)
	// The forward reaches the VM's 8081, and the VM sees the real client.
	answers(t, w.outside, net.JoinHostPort(uplink4, "9000"), outside4+"@8081")
	dropped(t, w.outside,
		net.JoinHostPort(vm6, "8081"), net.JoinHostPort(vm4, "8081")) // only udp/8081 is allowed
	// Without Internet the VM cannot reach out (it still answers).
	dropped(t, w.vm, net.JoinHostPort(outside4, "7000"), net.JoinHostPort(outside6, "7000"))

	// Another VM claiming this one's address or host port is refused,
	// and this one keeps its rules.
	for _, other := range []VM{
		{Link: "fy0-2", IPv6: vm.IPv6},
		{Link: "fy0-2", IPv4: netip.MustParseAddr("10.200.0.6"), Forwards: []Forward{{"tcp", 9000, 80}}},
	} {
		if err := f.AddVM(other); err == nil {
			t.Errorf("AddVM(%+v) over fy0-1's address or port: no error", other)
		}
	}
	reaches(t, w.outside, net.JoinHostPort(vm6, "8080"), outside6)

	// Replacing the entry moves the forward to another VM port (the same
	// key with another value, in one batch) and keeps the rest.
	vm.Forwards = []Forward{{Proto: "tcp", HostPort: 9000, VMPort: 8080}}
	if err := f.AddVM(vm); err != nil {
		t.Fatal(err)
	}
	answers(t, w.outside, net.JoinHostPort(uplink4, "9000"), outside4+"@8080")
	reaches(t, w.outside, net.JoinHostPort(vm4, "8080"), outside4)

	if err := f.RemoveVM("fy0-1"); err != nil {
		t.Fatal(err)
	}
	dropped(t, w.outside, net.JoinHostPort(vm6, "8080"), net.JoinHostPort(vm4, "8080"))
	// No forward any more: the host itself gets port 9000, where nothing
	// listens.
	refused(t, w.outside, net.JoinHostPort(uplink4, "9000"))
	if err := f.RemoveVM("fy0-1"); err != nil {
		t.Errorf("RemoveVM of an unknown link: %v", err)
	}
}

// otherTables adds tables Ferry does not own: inet "other" with a base
// chain, a rule and a set element, and ip "ferry" (same name, another
// family). It returns a function that describes them, to compare later.
func otherTables(t *testing.T, c *nftables.Conn) func() string {
	t.Helper()
	other := c.AddTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyINet})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "fwd", Table: other, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: other, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
	s := &nftables.Set{Table: other, Name: "ports", KeyType: nftables.TypeInetService}
	if err := c.AddSet(s, []nftables.SetElement{{Key: port(8080)}}); err != nil {
		t.Fatal(err)
	}
	sameName := c.AddTable(&nftables.Table{Name: TableName(0), Family: nftables.TableFamilyIPv4})
	c.AddChain(&nftables.Chain{Name: "c", Table: sameName})
	if err := c.Flush(); err != nil {
		t.Fatalf("other tables: %v", err)
	}
	return func() string {
		var b strings.Builder
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyIPv4} {
			tables, err := c.ListTablesOfFamily(fam)
			if err != nil {
				t.Fatal(err)
			}
			for _, tb := range tables {
				if tb.Name == TableName(0) && fam == nftables.TableFamilyINet {
					continue // Ferry's
				}
				fmt.Fprintf(&b, "table %d %s\n", fam, tb.Name)
			}
		}
		chains, err := c.ListChains()
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			if ch.Table.Name == TableName(0) && ch.Table.Family == nftables.TableFamilyINet {
				continue
			}
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "chain %s %s: %d rules\n", ch.Table.Name, ch.Name, len(rules))
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "set other ports: %d elements\n", len(elems))
		return b.String()
	}
}

// ferryTables counts the inet tables named name.
func ferryTables(t *testing.T, c *nftables.Conn, name string) int {
	t.Helper()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tb := range tables {
		if tb.Name == name {
			n++
		}
	}
	return n
}

func TestCrashAndClose(t *testing.T) {
	w := newWorld(t)
	c, err := nftables.New(nftables.WithNetNSFd(int(w.host.fd)))
	if err != nil {
		t.Fatal(err)
	}
	describe := otherTables(t, c)
	before := describe()
	out4 := net.JoinHostPort(outside4, "7000")
	vm := VM{Link: "fy0-1", IPv4: netip.MustParseAddr(vm4), IPv6: netip.MustParseAddr(vm6), Internet: true,
		AllowedPorts: []Port{{"tcp", 8080}}, Forwards: []Forward{{"tcp", 9000, 8080}}}

	crashed := w.open(t)
	if err := crashed.AddVM(vm); err != nil {
		t.Fatal(err)
	}
	reaches(t, w.vm, out4, uplink4)
	// The agent dies: its table stays behind, full.
	crashed.conn.CloseLasting()
	crashed.conn = nil

	f := w.open(t)
	for _, s := range f.sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(elems) > 0 {
			t.Errorf("set %s after Open over a leftover table: %d elements; want none", s.Name, len(elems))
		}
	}
	dropped(t, w.vm, out4)
	if err := f.AddVM(vm); err != nil {
		t.Fatal(err)
	}
	reaches(t, w.vm, out4, uplink4)
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := ferryTables(t, c, TableName(0)); n != 0 {
		t.Errorf("after Close: %d inet tables %q; want none", n, TableName(0))
	}
	// No rule of Ferry's left: the VM's traffic is forwarded as it is.
	reaches(t, w.vm, out4, vm4)
	if after := describe(); after != before {
		t.Errorf("other tables changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := f.AddVM(vm); !errors.Is(err, ErrClosed) {
		t.Errorf("AddVM after Close: %v; want ErrClosed", err)
	}
}

// Two agents on one machine (node slots 0 and 1) each judge only their
// own links: a VM of one is not dropped by the other's table, each
// agent's unregistered links stay closed, and one agent closing its table
// leaves the other's rules in place.
func TestTwoAgentsInOneNamespace(t *testing.T) {
	w := newWorld(t)
	const vm2v4, vm2v6 = "10.200.4.2", "fd00:f3:7:101::2"
	vm2 := newNS(t)
	w.host.veth(t, "fy1-1", vm2)
	w.host.addr(t, "fy1-1", "10.200.4.1/30", "fd00:f3:7:101::1/64")
	vm2.addr(t, "eth0", vm2v4+"/30", vm2v6+"/64")
	vm2.route(t, "0.0.0.0/0", "10.200.4.1")
	vm2.route(t, "::/0", "fd00:f3:7:101::1")
	serve(t, vm2, 8080)
	out4, out6 := net.JoinHostPort(outside4, "7000"), net.JoinHostPort(outside6, "7000")

	first, second := w.openSlot(t, 0), w.openSlot(t, 1)
	dropped(t, w.vm, out4, out6)
	dropped(t, vm2, out4, out6)
	dropped(t, w.outside, net.JoinHostPort(vm2v4, "8080"))
	if err := first.AddVM(VM{Link: "fy1-1", IPv4: netip.MustParseAddr(vm2v4)}); err == nil {
		t.Errorf("slot 0's firewall took slot 1's link")
	}
	if err := second.AddVM(VM{Link: "fy1-1", IPv4: netip.MustParseAddr(vm2v4), IPv6: netip.MustParseAddr(vm2v6), Internet: true,
		AllowedPorts: []Port{{"tcp", 8080}}}); err != nil {
		t.Fatal(err)
	}
	reaches(t, vm2, out4, uplink4)
	reaches(t, vm2, out6, vm2v6)
	reaches(t, w.outside, net.JoinHostPort(vm2v4, "8080"), outside4)
	dropped(t, w.vm, out4, out6) // slot 0's VM is still unregistered
	if err := first.AddVM(VM{Link: "fy0-1", IPv4: netip.MustParseAddr(vm4), IPv6: netip.MustParseAddr(vm6), Internet: true}); err != nil {
		t.Fatal(err)
	}
	reaches(t, w.vm, out4, uplink4)

	c, err := nftables.New(nftables.WithNetNSFd(int(w.host.fd)))
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if ferryTables(t, c, TableName(1)) != 0 || ferryTables(t, c, TableName(0)) != 1 {
		t.Fatalf("after slot 1 closed: tables %d %d, want 0 and 1", ferryTables(t, c, TableName(0)), ferryTables(t, c, TableName(1)))
	}
	reaches(t, w.vm, out4, uplink4)
	if err := first.RemoveVM("fy0-1"); err != nil {
		t.Fatal(err)
	}
	dropped(t, w.vm, out4)
}

// The single table of older agents, which judged every fy* link, is
// removed when an agent opens its own.
func TestLegacyTableRemoved(t *testing.T) {
	w := newWorld(t)
	c, err := nftables.New(nftables.WithNetNSFd(int(w.host.fd)))
	if err != nil {
		t.Fatal(err)
	}
	legacy := c.AddTable(&nftables.Table{Name: legacyTable, Family: nftables.TableFamilyINet})
	drop := nftables.ChainPolicyDrop
	c.AddChain(&nftables.Chain{Name: "forward", Table: legacy, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	f := w.open(t)
	if n := ferryTables(t, c, legacyTable); n != 0 {
		t.Fatalf("the legacy table is still there after Open")
	}
	if err := f.AddVM(VM{Link: "fy0-1", IPv4: netip.MustParseAddr(vm4), IPv6: netip.MustParseAddr(vm6), Internet: true}); err != nil {
		t.Fatal(err)
	}
	reaches(t, w.vm, net.JoinHostPort(outside4, "7000"), uplink4)
}
