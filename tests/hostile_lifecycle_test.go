package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// lifecycleSlowBootApp takes importSeconds to import, as a heavy framework
// does.
const lifecycleSlowBootApp = `
import time
time.sleep(%d)

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"up"})
`

// lifecycleChildren lists the processes whose parent is pid, as "pid
// (command)".
func lifecycleChildren(pid int) []string {
	var kids []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, child := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile("/proc/" + child + "/comm")
			kids = append(kids, child+" ("+strings.TrimSpace(string(comm))+")")
		}
	}
	return kids
}

// Deleting a persistent program while its VM boots ends that VM: after
// the boot would have finished, no init is left as a child of the agent,
// nothing is counted as running, and the program does not come back.
func TestHostileLifecycleDeleteDuringBoot(t *testing.T) {
	requirePythonModules(t, "asyncio")
	const importSeconds = 5
	code := writeApp(t, map[string]string{"main.py": fmt.Sprintf(lifecycleSlowBootApp, importSeconds)})
	sock := filepath.Join(t.TempDir(), "admin.sock")
	agent := serveAgent(t, fmt.Sprintf(`{"programs": {
		"slowboot": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		             "resources": {"vcpus": 1}, "on": {"http": false, "persistent": true}}}}`, code), agentOptions{}, "--admin", sock)
	pid, out := agent.cmd.Process.Pid, agent.out

	// The persistent program's VM is booting: its init is the agent's child.
	waitFor(t, 30*time.Second, func() bool { return len(lifecycleChildren(pid)) > 0 }, "the persistent program's VM did not start booting")
	booting := time.Now()
	t.Logf("booting: %v", lifecycleChildren(pid))
	bin, _ := buildAgent()
	if got, err := exec.Command(bin, "program", "--admin", sock, "delete", "slowboot").CombinedOutput(); err != nil {
		t.Fatalf("delete during the boot: %v %s", err, got)
	}
	if strings.Contains(out.String(), "program started") {
		t.Fatal("the boot finished before the delete: the test proves nothing (import not slow enough)")
	}
	t.Logf("deleted %s after the boot began", time.Since(booting).Round(time.Millisecond))

	// Well after the boot would have finished (and after the first
	// restart backoff of a persistent program):
	time.Sleep(time.Until(booting.Add(importSeconds*time.Second + 4*time.Second)))
	if kids := lifecycleChildren(pid); len(kids) > 0 {
		t.Fatalf("the deleted program's VM still runs as the agent's child: %v", kids)
	}
	m := curl(t, "--unix-socket", sock, "http://admin/metrics")
	if v := metricValue(t, m, "ferry_running_vms"); v != 0 {
		t.Fatalf("ferry_running_vms = %v after the delete", v)
	}
	if list, err := exec.Command(bin, "program", "--admin", sock, "list", "--json").CombinedOutput(); err != nil || strings.TrimSpace(string(list)) != "[]" {
		t.Fatalf("program list: %v %s", err, list)
	}
	if strings.Contains(out.String(), "program started") {
		t.Errorf("a VM of the deleted program started:\n%s", out.String())
	}
}
