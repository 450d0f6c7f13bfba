package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An instance on the qemu backend (README "Instances"): deployed with the
// test's own ed25519 key and port 22 allowed, Debian's ssh logs in from
// inside the agent's network namespace, at its IPv4 and IPv6 addresses,
// and runs commands; sshd, killed, is started again by init; a file
// written to the persistent root and one written to the persistent volume
// are both there after `program restart`, and so is the host key (ssh
// checks it against the first boot's); init seals the root's disk when
// the VM stops in time; both disks are consistent once it is deleted. One boot and one restart: under TCG each boot takes tens of
// seconds.
func TestInstanceSSHAndPersistenceAcrossRestart(t *testing.T) {
	images := requireImages(t)
	requireTool(t, "ssh")
	requireTool(t, "ssh-keygen")
	dir := t.TempDir()
	key := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ferry-instance-test", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}

	// The agent and its tap device live in a namespace of the test's; so
	// does ssh, and nothing reaches the VM's address from elsewhere.
	ns := newTestNetns(t)
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	serveAgent(t, `{"programs": {}}`, agentOptions{ns: ns}, "--backend", "qemu", "--images", images, "--state-dir", state,
		"--boot-timeout", "5m", "--admin", sock)
	bin, _ := buildAgent()
	program := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"program", "--admin", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("program %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	type status struct {
		Interface  string
		Persistent bool
		Running    bool
		VM         string
		IPv4, IPv6 string
		Timeline   string
	}
	// running waits for the instance's VM (other than the one named
	// not) and returns its status.
	running := func(not string) status {
		t.Helper()
		var st status
		waitFor(t, 5*time.Minute, func() bool {
			if err := json.Unmarshal([]byte(program("status", "box", "--json")), &st); err != nil {
				t.Fatal(err)
			}
			return st.Running && st.VM != not
		}, "the instance did not start")
		return st
	}

	manifest := filepath.Join(dir, "box.json")
	os.WriteFile(manifest, fmt.Appendf(nil, `{"kind": "instance",
		"rootfs": {"persistence": "host", "size_mib": 256},
		"authorized_keys": [%q],
		"environment": {"allowed_ports": [22]},
		"volumes": [{"mount": "/srv/data", "persistent": true, "name": "data", "size_mib": 32}],
		"resources": {"vcpus": 1, "memory": 512}}`, strings.TrimSpace(string(pub))), 0o644)
	began := time.Now()
	program("deploy", "box", manifest)
	st := running("")
	t.Logf("instance running in %s: %s at %s; boot timeline: %s", time.Since(began).Round(time.Millisecond), st.VM, st.IPv4, st.Timeline)
	if st.Interface != "instance" || !st.Persistent || st.IPv4 == "" {
		t.Fatalf("status: %+v", st)
	}

	// ssh reads no configuration of the machine's user (-F /dev/null: nor
	// does it make /root/.ssh) and keeps the host key it learns in the
	// test's own known_hosts; strict checks the key against it.
	knownHosts := filepath.Join(dir, "known_hosts")
	ssh := func(addr, strict, command string) (string, error) {
		// A login that hangs fails the test rather than holding it.
		cmd := ns.command("timeout", "180", "ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking="+strict, "-o", "UserKnownHostsFile="+knownHosts, "-o", "ConnectTimeout=60",
			"-o", "LogLevel=ERROR", "root@"+addr, command)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mustSSH := func(addr, strict, command string) string {
		t.Helper()
		out, err := ssh(addr, strict, command)
		if err != nil {
			t.Fatalf("ssh root@%s %q: %v\n%s\nagent's program logs:\n%s", addr, command, err, out, program("logs", "box"))
		}
		return out
	}
	addr := strings.Split(st.IPv4, "/")[0]
	if out := mustSSH(addr, "accept-new", "id -un; cat /proc/1/comm"); out != "root\ninit\n" {
		t.Fatalf("ssh ran as %q, want root with Ferry's init as PID 1", out)
	}
	// Its IPv6 address too, with the same host key.
	addr6 := strings.Split(st.IPv6, "/")[0]
	mustSSH(addr6, "accept-new", "true")
	keys, err := os.ReadFile(knownHosts)
	if err != nil {
		t.Fatal(err)
	}
	var hostKeys []string
	for _, line := range strings.Split(strings.TrimSpace(string(keys)), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[1] == "ssh-ed25519" {
			hostKeys = append(hostKeys, f[2])
		}
	}
	if len(hostKeys) != 2 || hostKeys[0] != hostKeys[1] {
		t.Fatalf("want the same ed25519 host key learnt at %s and %s, known_hosts has:\n%s", addr, addr6, keys)
	}

	// sshd dies: init starts it again, and ssh logs in again.
	mustSSH(addr, "yes", "kill -9 $(cat /run/sshd.pid)")
	killed, refused := time.Now(), 0
	waitFor(t, 2*time.Minute, func() bool {
		if _, err := ssh(addr, "yes", "true"); err != nil {
			refused++
			return false
		}
		return true
	}, "sshd did not come back after it was killed")
	t.Logf("sshd back %s after it was killed (%d logins refused meanwhile)", time.Since(killed).Round(time.Millisecond), refused)

	note := fmt.Sprintf("written before the restart at %d", time.Now().UnixNano())
	mustSSH(addr, "yes", fmt.Sprintf("echo %q > /root/note && echo %q > /srv/data/note && sync", note, note))

	// program restart: a new VM, the same root, volume and host key.
	program("restart", "box")
	st2 := running(st.VM)
	t.Logf("instance running again: %s; boot timeline: %s", st2.VM, st2.Timeline)
	addr = strings.Split(st2.IPv4, "/")[0]
	if out := mustSSH(addr, "yes", "cat /root/note /srv/data/note"); out != note+"\n"+note+"\n" {
		t.Fatalf("after the restart the notes are %q, want %q twice", out, note)
	}
	// sshd's own lines reach the program's logs, and so does init's
	// console, where the first VM's init said it sealed the root's disk.
	logs := program("logs", "box")
	for _, want := range []string{"Server listening on", "sealed the root and its disk"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the program's logs lack %q:\n%s", want, logs)
		}
	}
	// Deleted, both disks are consistent. (Not necessarily unmounted: a
	// persistent program's VM that its node stops gets a tenth of the
	// lease, 0.5 s here, before it is killed, which under TCG is too
	// short for init to unmount or seal; the journal covers that. The
	// seal of a VM stopped in time is the console line above.)
	program("delete", "box")
	requireCleanExt4(t, filepath.Join(state, "qemu", "volumes", "box", "data.ext4"))
	requireCleanExt4(t, filepath.Join(state, "qemu", "roots", "box.ext4"))
}
