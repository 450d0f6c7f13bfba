package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// goBuild compiles the package pkg (relative to tests/) into a new
// directory named after prefix, under buildRoot, and returns the binary's
// path, called name.
func goBuild(prefix, name, pkg string) (string, error) {
	dir, err := os.MkdirTemp(buildRoot, prefix)
	if err != nil {
		return "", err
	}
	return goBuildInto(dir, name, pkg)
}

// goBuildInto is goBuild into an existing directory. init and the test
// programs that run inside a guest are static; the host's binaries
// (host-agent, ferry-bench) link Debian's libdqlite with cgo, and the
// system SQLite (libsqlite3).
func goBuildInto(dir, name, pkg string) (string, error) {
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-tags", "libsqlite3", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if name == "init" || strings.HasPrefix(pkg, "./testdata/") {
		cmd = exec.Command("go", "build", "-o", bin, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", name, err, out)
	}
	return bin, nil
}

// buildInit compiles cmd/init once per test binary.
var buildInit = sync.OnceValues(func() (string, error) {
	return goBuild("ferry-init-bin-", "init", "../cmd/init")
})

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for namespaces, veth and loop devices (CI runs tests as root)")
	}
}

func requireTool(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s (make test installs it: .ci/deps)", name)
	}
	return p
}

func startGuest(t *testing.T) *guest {
	bin, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	// The machine's root is init's root here: ferry.overlay=1 makes it a
	// tmpfs overlay, so what init writes (/etc/hosts, SSH keys, the
	// program's files) stays in the guest and the host is left as it was.
	return startGuestWith(t, guestOptions{bin: bin, cmdline: "ferry.overlay=1"})
}

// outside runs f on a thread in a fresh network namespace: the test's side
// of the veth pair, so no traffic touches the machine's own network.
func outside(t *testing.T, ns netns.NsHandle, f func() error) error {
	var ferr error
	if err := inNetns(ns, func() { ferr = f() }); err != nil {
		return err
	}
	return ferr
}

// newOutsideNetns creates the test's namespace and returns its handle.
func newOutsideNetns(t *testing.T) netns.NsHandle {
	ns, err := makeNetns()
	if err != nil {
		t.Errorf("netns: %v", err)
		ns = netns.None()
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

const testApp = `#!/usr/bin/python3
# Test program: leaves orphans for init to reap, reports what it sees,
# then serves HTTP on [::]:$PORT.
import os, socket, sys, time, http.server

here = os.path.dirname(os.path.abspath(__file__))
for i in range(5):
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(0.2)
            os._exit(0)       # grandchild: exits as an orphan of init
        os._exit(0)
    os.wait()                 # the child is ours to wait for
with open(os.path.join(here, "seen.json"), "w") as f:
    import json
    json.dump({"hostname": socket.gethostname(), "pid1": open("/proc/1/cmdline").read().split("\0")[0],
               "pid": os.getpid(), "env": os.environ.get("GREETING")}, f)
with open("/data/written-by-app", "w") as f:
    f.write("persisted\n")
class V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
os.chdir(here)
V6Server(("::", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()
`

func TestInitAsPID1InNamespaces(t *testing.T) {
	requireRoot(t)
	requireTool(t, "/usr/bin/python3")
	e2fsck := requireTool(t, "e2fsck")

	// The program and a persistent ext4 volume on a loop device. The code
	// lives outside /tmp, which init covers with its own tmpfs.
	code := varTempDir(t)
	if err := os.WriteFile(filepath.Join(code, "app.py"), []byte(testApp), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(code, "index.html"), []byte("hello from the guest\n"), 0o644)
	loopDev := newLoopVolume(t).dev

	g := startGuest(t)

	// A bad configuration is a structured error; init keeps serving.
	bad := map[string]any{
		"program_id": "nstest", "interface": "executable", "entrypoint": "app.py",
		"code":    map[string]any{"encoding": "directory", "path": code},
		"network": map[string]any{"ipv4": map[string]any{"address": "10.99.0.2/33"}},
	}
	r := g.configure(t, bad)
	if r.OK || string(r.Phase) != "validate" || string(r.Field) != "network.ipv4.address" {
		t.Fatalf("bad configuration answered %+v", r)
	}
	// The veth pair: host0 in the test's namespace, eth0 in the guest's.
	outer := newOutsideNetns(t)
	err := outside(t, outer, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "host0"}, PeerName: "eth0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		peer, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsPid(peer, g.cmd.Process.Pid); err != nil {
			return fmt.Errorf("moving eth0 into the guest: %w", err)
		}
		host0, _ := netlink.LinkByName("host0")
		for _, a := range []string{"10.99.0.1/24", "fd99::1/64"} {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = syscall.IFA_F_NODAD
			if err := netlink.AddrAdd(host0, addr); err != nil {
				return err
			}
		}
		return netlink.LinkSetUp(host0)
	})
	if err != nil {
		t.Fatal(err)
	}

	good := map[string]any{
		"program_id": "nstest", "interface": "executable", "entrypoint": "app.py",
		"code":     map[string]any{"encoding": "directory", "path": code},
		"hostname": "ferry-guest",
		"env":      map[string]any{"GREETING": "hi"},
		"port":     8080,
		"network": map[string]any{
			"ipv4": map[string]any{"address": "10.99.0.2/24", "gateway": "10.99.0.1"},
			"ipv6": map[string]any{"address": "fd99::2/64", "gateway": "fd99::1"},
		},
		"volumes": []any{map[string]any{"mount": "/data", "device": strings.TrimPrefix(loopDev, "/dev/"), "fs": "ext4"}},
	}
	r = g.configure(t, good)
	if !r.OK {
		t.Fatalf("good configuration failed: %s / %s: %s\n%s", r.Phase, r.Field, r.Message, g.stderr.String())
	}
	phases := map[string]bool{}
	for _, e := range r.Timeline {
		phases[string(e.Phase)] = true
	}
	for _, p := range []string{"kernel", "mounts", "transport", "config", "network", "volumes", "code", "app"} {
		if !phases[p] {
			t.Errorf("timeline lacks %q: %v", p, r.Timeline)
		}
	}
	if r := g.configure(t, good); r.OK || !strings.Contains(string(r.Message), "already configured") {
		t.Fatalf("second configuration answered %+v", r)
	}

	// The program answers on the guest's IPv6 address from outside.
	var body []byte
	err = outside(t, outer, func() error {
		var err error
		body, err = httpGetInNamespace("[fd99::2]:8080", "/index.html", 30*time.Second)
		return err
	})
	if err != nil {
		pid := g.cmd.Process.Pid
		tcp6, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp6", pid))
		ifs, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/if_inet6", pid))
		routes, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/ipv6_route", pid))
		t.Fatalf("%v\nguest tcp6:\n%s\nguest if_inet6:\n%s\nroutes:\n%s", err, tcp6, ifs, routes)
	}
	if string(body) != "hello from the guest\n" {
		t.Fatalf("body %q", body)
	}

	// What the program saw: our hostname, init as PID 1 of a fresh /proc.
	var seen struct {
		Hostname, Pid1, Env string
		Pid                 int
	}
	// Written into the code directory, which on the overlay root is the
	// guest's copy: read through init's root, and absent on the host.
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(g.cmd.Process.Pid), "root", code, "seen.json"))
	if err != nil || json.Unmarshal(raw, &seen) != nil {
		t.Fatalf("seen.json: %v %s", err, raw)
	}
	if seen.Hostname != "ferry-guest" || filepath.Base(seen.Pid1) != "init" || seen.Env != "hi" {
		t.Fatalf("program saw %+v", seen)
	}
	if _, err := os.Stat(filepath.Join(code, "seen.json")); err == nil {
		t.Errorf("the program's write reached the host's %s", code)
	}

	// The orphans were reaped: init has no zombie children.
	time.Sleep(500 * time.Millisecond)
	if z := zombieChildren(t, g.cmd.Process.Pid); len(z) > 0 {
		t.Fatalf("init leaves zombies: %v", z)
	}

	// SIGTERM: the host is told (GOAWAY), the program is stopped, the volume
	// unmounted, and init powers off (its PID namespace ends with SIGINT).
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.sess.GoAwayReceived():
	case <-time.After(20 * time.Second):
		t.Fatal("no GOAWAY after SIGTERM")
	}
	var exitErr error
	select {
	case <-g.done:
		exitErr = g.waitErr
	case <-time.After(30 * time.Second):
		t.Fatal("init did not power off")
	}
	if !killedBy(exitErr, syscall.SIGINT) {
		t.Fatalf("init ended with %v, want the power-off of its PID namespace (SIGINT)", exitErr)
	}
	logs := g.stderr.String()
	for _, want := range []string{"unmounted volumes", "/data", "powering off"} {
		if !strings.Contains(logs, want) {
			t.Errorf("init log lacks %q", want)
		}
	}
	if out, err := exec.Command(e2fsck, "-n", "-f", loopDev).CombinedOutput(); err != nil {
		t.Fatalf("volume not clean after shutdown: %v\n%s", err, out)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /written-by-app", loopDev).Output(); err == nil && !strings.Contains(string(out), "persisted") {
		t.Fatalf("file written by the program is missing: %q", out)
	}
}

// A configuration that fails after validation (here: no such program) is
// reported with phase and field; the VM then refuses another configuration
// (parts may already be applied) but keeps answering.
func TestFailedSetupIsReportedAndFinal(t *testing.T) {
	requireRoot(t)
	g := startGuest(t)
	code := varTempDir(t)
	missing := map[string]any{
		"program_id": "nstest", "interface": "executable", "entrypoint": "no-such-program",
		"code": map[string]any{"encoding": "directory", "path": code},
	}
	if r := g.configure(t, missing); r.OK || string(r.Phase) != "code" || string(r.Field) != "entrypoint" {
		t.Fatalf("missing entrypoint answered %+v", r)
	}
	if r := g.configure(t, missing); r.OK || !strings.Contains(string(r.Message), "already configured") {
		t.Fatalf("second configuration answered %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.sess.Ping(ctx); err != nil {
		t.Fatalf("init stopped answering: %v", err)
	}
	// Streams are refused while no program runs.
	st, err := g.sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var resp message.ResponseHead
	var serr *mux.StreamError
	if err := st.ReadResponse(ctx, &resp); !errors.As(err, &serr) || serr.Code != frame.CodeUnavailable {
		t.Fatalf("stream without a program: %v", err)
	}
}

// loopVolume is an image attached to a loop device, detached when the
// test ends.
type loopVolume struct {
	dev          string // /dev/loopN
	major, minor uint32
}

// newLoopVolume attaches a new ext4 image of 16 MiB.
func newLoopVolume(t *testing.T) loopVolume {
	t.Helper()
	mkfs := requireTool(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), "volume.ext4")
	if out, err := exec.Command("truncate", "-s", "16M", img).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	return attachLoop(t, img)
}

// attachLoop attaches the image img to a free loop device.
func attachLoop(t *testing.T, img string) loopVolume {
	t.Helper()
	losetup := requireTool(t, "losetup")
	out, err := exec.Command(losetup, "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device available: %v", err)
	}
	v := loopVolume{dev: strings.TrimSpace(string(out))}
	t.Cleanup(func() { exec.Command(losetup, "-d", v.dev).Run() })
	var st unix.Stat_t
	if err := unix.Stat(v.dev, &st); err != nil {
		t.Fatal(err)
	}
	v.major, v.minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	return v
}

// varTempDir is a temporary directory outside /tmp.
func varTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/var/tmp", "ferry-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// httpGetInNamespace must run on a thread locked into a network namespace.
// It dials on that thread (net/http would dial from another goroutine, in
// the machine's namespace) and speaks HTTP/1.1 over the socket, which stays
// in the namespace it was created in.
func httpGetInNamespace(addr, path string, patience time.Duration) ([]byte, error) {
	deadline := time.Now().Add(patience)
	for {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
			if err := req.Write(conn); err != nil {
				return nil, err
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), req)
			if err != nil {
				return nil, err
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				return nil, fmt.Errorf("status %s", resp.Status)
			}
			return io.ReadAll(resp.Body)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("guest never answered on %s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// zombieChildren lists init's children in state Z.
func zombieChildren(t *testing.T, pid int) []string {
	var zombies []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, child := range strings.Fields(string(b)) {
			stat, err := os.ReadFile("/proc/" + child + "/stat")
			if err != nil {
				continue
			}
			// The state follows the parenthesised command name.
			s := string(stat)
			if i := strings.LastIndex(s, ")"); i > 0 && i+2 < len(s) && s[i+2] == 'Z' {
				zombies = append(zombies, child)
			}
		}
	}
	return zombies
}
