package tests

import (
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNetns is a network namespace a test made, held by a sleeping
// process. An agent started in it (command) puts its VMs' host-side links
// (veth, tap) there, so everything the test sends to a VM's private
// address stays inside it and never touches the machine's own network.
type testNetns struct {
	path string // /proc/PID/ns/net of the holder
	pid  int    // the holder
}

// newTestNetns makes a network namespace with its loopback up; it ends
// with the test.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	requireRoot(t)
	requireTool(t, "unshare")
	requireTool(t, "nsenter")
	holder := exec.Command("unshare", "--net", "--", "sleep", "infinity")
	holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the OS thread that forked the holder exits, and
	// Go retires a thread whenever a goroutine exits locked to it (the
	// namespace tests do, on purpose): the holder is forked from a thread
	// kept locked until the test ends, or the namespace could die under
	// the test and its PID, reused, name another process's namespace.
	started, done := make(chan error, 1), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := holder.Start()
		started <- err
		if err == nil {
			<-done
		}
	}()
	if err := <-started; err != nil {
		t.Fatalf("unshare --net: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait(); close(done) })
	n := &testNetns{path: "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/net", pid: holder.Process.Pid}
	ours, _ := os.Readlink("/proc/self/ns/net")
	waitFor(t, 10*time.Second, func() bool {
		theirs, err := os.Readlink(n.path)
		return err == nil && theirs != ours
	}, "unshare did not enter a new network namespace")
	if out, err := n.command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback up in the test's namespace: %v\n%s", err, out)
	}
	return n
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			t.Errorf("entering the test's namespace: %v", err)
			return
		}
		f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // else the thread ends with the goroutine
		}
	}()
	<-done
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
	agent.run(t, "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "up0", "netns", strconv.Itoa(up.pid))
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
