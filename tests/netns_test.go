package tests

import (
	"os"
	"os/exec"
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
	if err := holder.Start(); err != nil {
		t.Fatalf("unshare --net: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	n := &testNetns{path: "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/net"}
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
