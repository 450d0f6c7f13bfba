package tests

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sandboxProbeApp tries, on every request, what a hostile program would:
// write where the host keeps its configuration, read its secrets, and
// reports what it saw.
const sandboxProbeApp = `
import json, os

def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        return type(e).__name__

def write(path):
    def f():
        with open(path, "w") as fh:
            fh.write("written by a sandboxed program\n")
    return f

def read(path):
    def f():
        open(path, "rb").read()
    return f

def slurp(path):
    try:
        return open(path).read()
    except Exception as e:
        return type(e).__name__

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    marker = "ferry-sandbox-probe-" + str(os.getpid())
    seen = {
        "write_etc": attempt(write("/etc/" + marker)),
        "write_root": attempt(write("/root/" + marker)),
        "write_usr": attempt(write("/usr/" + marker)),
        "write_var": attempt(write("/var/" + marker)),
        "read_shadow": attempt(read("/etc/shadow")),
        "marker": marker,
        "uid": os.getuid(),
        "keys": slurp("/root/.ssh/authorized_keys"),
        "hosts": slurp("/etc/hosts"),
        "env": sorted(os.environ),
    }
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
`

// sandboxHostFiles are the host files a sandboxed program must never
// change (and that the old sandbox rewrote).
var sandboxHostFiles = []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/root/.ssh/authorized_keys", "/root/.ssh"}

// sandboxFingerprint hashes the files (their content, mode and kind; a
// missing file hashes as missing).
func sandboxFingerprint(t *testing.T, paths []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			out[p] = "missing"
			continue
		}
		h := sha256.New()
		fmt.Fprintf(h, "%v %v\n", fi.Mode(), fi.Size())
		if fi.Mode().IsRegular() {
			if f, err := os.Open(p); err == nil {
				io.Copy(h, f)
				f.Close()
			}
		}
		out[p] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

// sandboxGet returns the status and body of a GET.
func sandboxGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// A sandboxed program (the default backend, as make demo runs it) cannot
// touch the host: its writes to /usr are refused, its writes to /etc and
// /root land in its own layers, /etc/shadow is unreadable, and what init
// writes (hosts, hostname, SSH keys) stays inside. It runs as an
// unprivileged host uid and gets none of the agent's environment.
func TestSandboxKeepsTheHostUntouched(t *testing.T) {
	requireRoot(t)
	requirePythonModules(t, "json")
	before := sandboxFingerprint(t, sandboxHostFiles)
	code := writeApp(t, map[string]string{"main.py": sandboxProbeApp})
	// Tools make code directories only root may enter (t.TempDir is 0700):
	// the guest must still read its code.
	if err := os.Chmod(code, 0o700); err != nil {
		t.Fatal(err)
	}
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISandboxProbeKeySandboxProbeKeySandbox1 probe"
	agent := serveAgent(t, fmt.Sprintf(`{"programs": {"probe": {
		"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		"authorized_keys": [%q], "on": {"http": true}}}}`, code, key), agentOptions{env: []string{"FERRY_ADMIN_TOKEN=agent-secret-token"}})

	status, body := sandboxGet(t, "http://"+agent.addr+"/vm/probe/")
	if status != http.StatusOK {
		t.Fatalf("probe answered %d: %s", status, body)
	}
	var seen struct {
		Marker, Keys string
		UID          int
		Env          []string
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(body), &seen); err != nil || json.Unmarshal([]byte(body), &raw) != nil {
		t.Fatalf("probe answer %q: %v", body, err)
	}
	t.Logf("the program saw: %s", body)
	for _, k := range []string{"write_usr", "write_var", "read_shadow"} {
		if raw[k] == "ok" {
			t.Errorf("%s succeeded in the sandbox; it must be refused", k)
		}
	}
	for dir, key := range map[string]string{"/etc": "write_etc", "/root": "write_root", "/usr": "write_usr", "/var": "write_var"} {
		if _, err := os.Lstat(filepath.Join(dir, seen.Marker)); err == nil {
			os.Remove(filepath.Join(dir, seen.Marker))
			t.Errorf("the program's write to %s (%v) reached the host", dir, raw[key])
		}
	}
	if !strings.Contains(seen.Keys, key) {
		t.Errorf("the guest's /root/.ssh/authorized_keys does not hold the program's key: %q", seen.Keys)
	}
	if seen.UID != 0 {
		t.Errorf("the program runs as uid %d in its sandbox, want root", seen.UID)
	}
	for _, kv := range seen.Env {
		if strings.HasPrefix(kv, "FERRY_ADMIN_TOKEN") {
			t.Errorf("the agent's environment reached the program: %s", kv)
		}
	}
	// On the host, the guest's processes belong to an unprivileged uid.
	for _, pid := range sandboxDescendants(agent.cmd.Process.Pid) {
		if uid := sandboxUID(pid); uid == 0 {
			t.Errorf("process %d (%s) of the sandbox runs as the host's root", pid, sandboxComm(pid))
		}
	}
	if after := sandboxFingerprint(t, sandboxHostFiles); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("host files changed while the sandbox ran:\nbefore %v\nafter  %v", before, after)
	}
}

// A program over its memory limit is killed inside its sandbox and the
// kill is reported in its logs; the agent and another program go on, and
// the program itself answers again once its worker is back.
func TestSandboxMemoryLimitKillsOnlyTheProgram(t *testing.T) {
	requireRoot(t)
	requirePythonModules(t, "json")
	hog := writeApp(t, map[string]string{"main.py": `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/hog":
        blocks = [bytearray(1 << 20) for _ in range(500)]  # 500 MB
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"alive"})
`})
	other := writeApp(t, map[string]string{"main.py": `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"other"})
`})
	agent := serveAgent(t, fmt.Sprintf(`{"programs": {
		"hog": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		        "resources": {"vcpus": 1, "memory": 64}, "on": {"http": true}},
		"other": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		          "on": {"http": true}}}}`, hog, other), agentOptions{})
	url := "http://" + agent.addr + "/vm/"
	if status, body := sandboxGet(t, url+"hog/"); status != 200 || body != "alive" {
		t.Fatalf("hog before: %d %q", status, body)
	}
	status, body := sandboxGet(t, url+"hog/hog")
	if status == http.StatusOK {
		t.Fatalf("a program limited to 64 MiB allocated 500 MB: %d %q", status, body)
	}
	t.Logf("over its limit: %d %s", status, body)
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(agent.out.String(), "out of memory") }, "the agent did not report the OOM kill")
	if status, body := sandboxGet(t, url+"other/"); status != 200 || body != "other" {
		t.Fatalf("the other program: %d %q", status, body)
	}
	waitFor(t, 30*time.Second, func() bool {
		status, body := sandboxGet(t, url+"hog/")
		return status == 200 && body == "alive"
	}, "the program did not answer again after its worker was killed")
	bin, _ := buildAgent()
	logs, err := exec.Command(bin, "program", "--admin", agent.admin, "logs", "hog").CombinedOutput()
	if err != nil || !strings.Contains(string(logs), "out of memory") {
		t.Errorf("program logs do not report the OOM kill (%v):\n%s", err, logs)
	}
}

// An agent killed with SIGKILL leaves no mount behind, and the next agent
// removes the cgroups the dead one left.
func TestSandboxAgentKilledLeavesNothing(t *testing.T) {
	requireRoot(t)
	requirePythonModules(t, "json")
	code := writeApp(t, map[string]string{"main.py": `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"up"})
`})
	config := fmt.Sprintf(`{"programs": {"leak": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		"resources": {"memory": 128}, "on": {"http": true}}}}`, code)
	mountsBefore := sandboxHostMounts(t)
	agent := serveAgent(t, config, agentOptions{})
	if status, body := sandboxGet(t, "http://"+agent.addr+"/vm/leak/"); status != 200 || body != "up" {
		t.Fatalf("program: %d %q", status, body)
	}
	children := sandboxDescendants(agent.cmd.Process.Pid)
	agent.cmd.Process.Kill()
	waitFor(t, 30*time.Second, func() bool {
		for _, pid := range children {
			if syscall.Kill(pid, 0) == nil {
				return false
			}
		}
		return true
	}, "the sandbox's processes outlived the agent")
	// Mounts made since the agent started that name the program or the
	// sandbox (other tests' mounts elsewhere are not this test's business).
	for point := range sandboxHostMounts(t) {
		if !mountsBefore[point] && (strings.Contains(point, "ferry") || strings.Contains(point, "leak") || strings.HasPrefix(point, code)) {
			t.Errorf("the killed agent left a mount on the host: %s", point)
		}
	}
	leftover := sandboxCgroupsOf(agent.cmd.Process.Pid)
	t.Logf("cgroups the killed agent left: %v", leftover)
	again := serveAgent(t, config, agentOptions{})
	if status, body := sandboxGet(t, "http://"+again.addr+"/vm/leak/"); status != 200 || body != "up" {
		t.Fatalf("program after the restart: %d %q", status, body)
	}
	for _, dir := range leftover {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("the restarted agent kept the dead agent's cgroup %s", dir)
		}
	}
}

// sandboxDescendants lists the processes below pid.
func sandboxDescendants(pid int) []int {
	parents := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command may hold spaces and parentheses: fields follow the last ')'.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 {
			ppid, _ := strconv.Atoi(fields[1])
			parents[ppid] = append(parents[ppid], child)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range parents[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// sandboxUID is the real uid of a process on the host (-1 if gone).
func sandboxUID(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			if fields := strings.Fields(rest); len(fields) > 0 {
				uid, _ := strconv.Atoi(fields[0])
				return uid
			}
		}
	}
	return -1
}

func sandboxComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// sandboxHostMounts returns the mount points of the host's mount
// namespace (the test's own).
func sandboxHostMounts(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	points := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if fields := strings.Fields(line); len(fields) > 4 {
			points[fields[4]] = true
		}
	}
	return points
}

// sandboxCgroupsOf lists the cgroup directories the agent pid made.
func sandboxCgroupsOf(pid int) []string {
	matches, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/*/ferry/%d-*", pid))
	more, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/ferry/%d-*", pid))
	return append(matches, more...)
}
