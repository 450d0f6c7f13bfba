package tests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNetns is a network namespace a test made, held open by a descriptor
// of the test binary's (no process lives in it to hold it, and no process
// ID names it, so it cannot end early or be confused with another
// process's after that ID is reused). An agent started in it (command)
// puts its VMs' host-side links (veth, tap) there, so everything the test
// sends to a VM's private address stays inside it and never touches the
// machine's own network.
type testNetns struct {
	handle netns.NsHandle // the descriptor that holds it
	path   string         // /proc/OURPID/fd/N: how nsenter and other processes open it
}

// newTestNetns makes a network namespace with its loopback up; it ends
// with the test.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	requireRoot(t)
	requireTool(t, "nsenter")
	handle, err := makeNetns()
	if err != nil {
		t.Fatalf("a new network namespace: %v", err)
	}
	t.Cleanup(func() { handle.Close() })
	n := &testNetns{handle: handle, path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(handle))}
	nl := n.netlink(t)
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("loopback up in the test's namespace: %v", err)
	}
	// Linux gives lo 127.0.0.1 as it comes up; a namespace without it
	// would fail later and far from here (an agent that cannot listen).
	addrs, err := nl.AddrList(lo, netlink.FAMILY_V4)
	if err != nil || !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.IsLoopback() }) {
		t.Fatalf("the test's namespace has no loopback address after lo came up: %v %v", addrs, err)
	}
	return n
}

// describe is what the namespace holds (its links and addresses), for a
// test that failed in it.
func (n *testNetns) describe() string {
	out, err := n.command("ip", "-brief", "address").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ip address in the test's namespace: %v\n%s", err, out)
	}
	return string(out)
}

// command runs name inside the namespace.
func (n *testNetns) command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.path, "--", name}, args...)...)
}

// curl runs the real curl inside the namespace.
func (n *testNetns) curl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.command("curl", append([]string{"-sS", "--max-time", "60"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v in the test's namespace: %v", args, err)
	}
	return string(out)
}

// netlink returns a netlink handle inside the namespace, closed with the
// test.
func (n *testNetns) netlink(t *testing.T) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromPath(n.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// run runs a command inside the namespace and fails the test if it fails.
func (n *testNetns) run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := n.command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v in the test's namespace: %v\n%s", name, args, err, out)
	}
}

// do runs f on a thread inside the namespace: sockets f opens (listeners,
// dials) stay there for their whole life.
func (n *testNetns) do(t *testing.T, f func()) {
	t.Helper()
	ns, err := netns.GetFromPath(n.path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := inNetns(ns, f); err != nil {
		t.Error(err)
	}
}

// makeNetns makes a network namespace and returns the descriptor that
// holds it.
func makeNetns() (netns.NsHandle, error) {
	var h netns.NsHandle
	err := onThreadBackHome(func() error {
		var err error
		h, err = netns.New() // moves the thread there
		return err
	})
	return h, err
}

// inNetns runs f on a thread inside ns: sockets f opens stay there for
// their whole life.
func inNetns(ns netns.NsHandle, f func()) error {
	return onThreadBackHome(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("entering the test's namespace: %w", err)
		}
		f()
		return nil
	})
}

// onThreadBackHome runs f on a locked thread, which f may move into
// another network namespace, and moves the thread back to where it was
// before it unlocks it. A thread that cannot go back stays locked, and Go
// ends it with its goroutine rather than run others in the wrong
// namespace. (A thread must never be left behind on purpose: were it the
// process's main thread, which Go parks instead of ending, the namespace
// would live as long as the test binary.)
func onThreadBackHome(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("this thread's namespace: %w", err)
			return
		}
		defer home.Close()
		defer func() {
			if netns.Set(home) == nil {
				runtime.UnlockOSThread()
			}
		}()
		errc <- f()
	}()
	return <-errc
}

// listen opens a listener inside the namespace, closed with the test.
func (n *testNetns) listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	var err error
	n.do(t, func() { l, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listening on %s %s in the test's namespace: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// dial connects from inside the namespace.
func (n *testNetns) dial(t *testing.T, network, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	n.do(t, func() { c, err = net.DialTimeout(network, addr, timeout) })
	return c, err
}

// upstream is the outside of an agent's namespace in tests: a namespace
// linked to it by a veth pair (wan0 on the agent's side, the agent's
// uplink; up0 on this side), which is the agent's default router for
// IPv4 and IPv6.
type upstream struct {
	*testNetns
	// Router4 and Router6 are up0's addresses; Uplink4 and Uplink6 the
	// agent's wan0's.
	Router4, Router6, Uplink4, Uplink6 string
}

// newUpstream links a new namespace to agent's as its upstream router.
// With onLinkPrefix, it also reaches that prefix (the agent's
// --ipv6-prefix) as on-link on up0, so that it sends neighbour
// solicitations for the VMs' addresses, which the agent must answer (NDP
// proxy).
func newUpstream(t *testing.T, agent *testNetns, onLinkPrefix string) *upstream {
	t.Helper()
	requireTool(t, "ip")
	up := &upstream{testNetns: newTestNetns(t), Router4: "192.0.2.1", Router6: "2001:db8:ff::1", Uplink4: "192.0.2.2", Uplink6: "2001:db8:ff::2"}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wan0"}, PeerName: "up0", PeerNamespace: netlink.NsFd(up.handle)}
	if err := agent.netlink(t).LinkAdd(veth); err != nil {
		t.Fatalf("the veth pair between the agent's namespace and its upstream: %v", err)
	}
	for _, side := range []struct {
		ns           *testNetns
		link, a4, a6 string
	}{{agent, "wan0", up.Uplink4, up.Uplink6}, {up.testNetns, "up0", up.Router4, up.Router6}} {
		side.ns.run(t, "ip", "addr", "add", side.a4+"/24", "dev", side.link)
		side.ns.run(t, "ip", "addr", "add", side.a6+"/64", "dev", side.link, "nodad")
		side.ns.run(t, "ip", "link", "set", side.link, "up")
	}
	agent.run(t, "ip", "route", "add", "default", "via", up.Router4)
	agent.run(t, "ip", "-6", "route", "add", "default", "via", up.Router6, "dev", "wan0")
	if onLinkPrefix != "" {
		up.run(t, "ip", "-6", "route", "add", onLinkPrefix, "dev", "up0")
	}
	return up
}

// Making a test's namespace leaves every thread of the test binary in the
// namespace it was in: no thread is left behind in one that should end
// with its test (the process's main thread, which Go never ends, would
// keep it alive for the whole run).
func TestNewTestNetnsLeavesEveryThreadHome(t *testing.T) {
	home, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		t.Run(fmt.Sprint(i), func(t *testing.T) { newTestNetns(t) })
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if err == nil && ns != home {
			t.Errorf("thread %s is in %s, not in the test binary's %s", task.Name(), ns, home)
		}
	}
}
