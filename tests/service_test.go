package tests

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
)

// serviceNotify is the service manager's end of NOTIFY_SOCKET: it takes
// the states the agent sends with their sender's pid (systemd's
// NotifyAccess=main only believes the unit's main process).
type serviceNotify struct {
	conn *net.UnixConn
}

func listenServiceNotify(t *testing.T, path string) *serviceNotify {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	return &serviceNotify{conn: conn}
}

// await waits for a state containing want from pid; exited ends the wait
// early (the agent died).
func (n *serviceNotify) await(t *testing.T, want string, pid int, exited <-chan struct{}, out *syncbuf.Buffer) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	buf, oob := make([]byte, 4096), make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("the agent exited before %q:\n%s", want, out.String())
		default:
		}
		n.conn.SetReadDeadline(time.Now().Add(time.Second))
		k, oobn, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sender := -1
		if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
			if cred, err := syscall.ParseUnixCredentials(&msgs[0]); err == nil {
				sender = int(cred.Pid)
			}
		}
		state := string(buf[:k])
		t.Logf("notify from pid %d: %q", sender, state)
		if sender != pid {
			t.Fatalf("%q came from pid %d, not the unit's main process %d", state, sender, pid)
		}
		if strings.Contains(state, want) {
			return
		}
	}
	t.Fatalf("no %q from the agent:\n%s", want, out.String())
}

// The Debian package: make deb builds it; dpkg -i installs it, its
// maintainer scripts run and enable the unit, its files are where the
// README says, systemd-analyze verify accepts the installed unit; then the
// unit's ExecStart, started as systemd would (agent.env, NOTIFY_SOCKET),
// serves examples/hello, says READY=1 from its main process once it
// serves, reloads agent.json on SIGHUP and drains and exits 0 on SIGTERM.
// All of it happens in a mount namespace whose root is an overlay of the
// machine's (tests/testdata/service/debroot.sh): the host's /etc, dpkg
// database and /var/lib stay as they were, which the test checks after.
func TestServicePackage(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"make", "dpkg", "dpkg-query", "unshare", "pivot_root", "chroot"} {
		requireTool(t, tool)
	}
	requirePythonModules(t, "fastapi")
	if out, err := exec.Command("dpkg-query", "-W", "ferry").CombinedOutput(); err == nil {
		t.Skipf("the ferry package is installed on this machine: %s", out)
	}
	shared, work := t.TempDir(), t.TempDir()
	hostFiles := []string{"/etc/ferry", "/lib/systemd/system/ferry-agent.service", "/usr/lib/ferry", "/usr/bin/host-agent"}
	before := map[string]bool{}
	for _, f := range hostFiles {
		_, err := os.Lstat(f)
		before[f] = err == nil
	}

	// make deb, with nfpm from the module cache (make test fetched it:
	// the tests download nothing).
	mk := exec.Command("make", "-s", "-C", "..", "deb", "DEB_DIR="+shared, "DEB_VERSION=0.0~test")
	mk.Env = append(os.Environ(), "GOPROXY=off")
	if out, err := mk.CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("GOPROXY=off")) {
			t.Skipf("nfpm is not in Go's module cache (make test fetches it; make debtools):\n%s", out)
		}
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	if err := os.Rename(filepath.Join(shared, "ferry_0.0~test_amd64.deb"), filepath.Join(shared, "ferry.deb")); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	hello := `{"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": "/usr/share/ferry/examples/hello"}, "on": {"http": true}}`
	config := filepath.Join(shared, "agent.json")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`{"listen": %q, "programs": {"hello": %s}}`, addr, hello)), 0o644); err != nil {
		t.Fatal(err)
	}
	notify := listenServiceNotify(t, filepath.Join(shared, "notify.sock"))

	out := &syncbuf.Buffer{}
	script, _ := filepath.Abs("testdata/service/debroot.sh")
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", script, work, shared)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("debroot output:\n%s", out.String())
		}
	})
	pid := cmd.Process.Pid // unshare, then sh, then the agent, by exec: the unit's main process
	notify.await(t, "READY=1", pid, exited, out)

	installed := out.String()
	if i := strings.Index(installed, "== start"); i >= 0 {
		t.Logf("installed:\n%s", installed[:i])
	}
	for _, want := range []string{"ferry install ok installed", "conffile /etc/ferry/agent.json", "conffile /etc/ferry/agent.env"} {
		if !strings.Contains(installed, want) {
			t.Errorf("dpkg -i: no %q", want)
		}
	}
	for _, f := range []string{"/usr/bin/host-agent", "/usr/lib/ferry/host-agent", "/usr/lib/ferry/init", "/lib/systemd/system/ferry-agent.service",
		"/etc/ferry/agent.json", "/etc/ferry/agent.env", "/usr/share/ferry/rootfs/build.sh", "/usr/share/ferry/examples/hello/main.py",
		"/var/lib/ferry", "/etc/systemd/system/multi-user.target.wants/ferry-agent.service"} {
		if !strings.Contains(installed, "present "+f+"\n") {
			t.Errorf("the package did not install %s", f)
		}
	}
	switch {
	case strings.Contains(installed, "verify: ok"):
	case strings.Contains(installed, "verify: skipped"):
		t.Log("systemd-analyze is missing: the unit was not verified")
	default:
		t.Errorf("systemd-analyze verify found fault with the unit (its words after \"verify:\" above)")
	}

	if body := curl(t, "-sS", "--max-time", "120", "http://"+addr+"/vm/hello/"); !strings.Contains(body, "Hello from Ferry") {
		t.Fatalf("the service does not serve examples/hello: %s", body)
	}

	// systemctl reload: SIGHUP, agent.json read again.
	doc := fmt.Sprintf(`{"listen": %q, "programs": {"hello": %s, "again": %s}}`, addr, hello, hello)
	if err := os.WriteFile(config, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	notify.await(t, "RELOADING=1", pid, exited, out)
	notify.await(t, "READY=1\nSTATUS=configuration reloaded: 2 programs from the file; serving on", pid, exited, out)
	// The agent's log is written off its own path (host/logsink), so the
	// report may reach stderr a moment after READY=1.
	waitFor(t, 30*time.Second, func() bool {
		return strings.Contains(out.String(), `msg="configuration reloaded"`) && strings.Contains(out.String(), "added=[again]")
	}, "the reload was not reported in the agent's log")
	if body := curl(t, "-sS", "--max-time", "120", "http://"+addr+"/vm/again/"); !strings.Contains(body, "Hello from Ferry") {
		t.Fatalf("the program added by the reload is not served: %s", body)
	}

	// systemctl stop: SIGTERM to the main process (KillMode=mixed).
	cmd.Process.Signal(syscall.SIGTERM)
	notify.await(t, "STOPPING=1", pid, exited, out)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatal("the agent did not stop within the unit's TimeoutStopSec")
	}
	if waitErr != nil {
		t.Fatalf("the agent's exit: %v", waitErr)
	}

	// The host is as it was.
	if out, err := exec.Command("dpkg-query", "-W", "ferry").CombinedOutput(); err == nil {
		t.Errorf("the package reached the host's dpkg database: %s", out)
	}
	for _, f := range hostFiles {
		if _, err := os.Lstat(f); err == nil && !before[f] {
			t.Errorf("%s was written on the host", f)
		}
	}
}
