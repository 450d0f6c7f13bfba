package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildAgent compiles host-agent and init side by side, as make build does.
var buildAgent = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "ferry-agent-bin-")
	if err != nil {
		return "", err
	}
	for _, b := range []struct{ out, pkg string }{{"init", "../cmd/init"}, {"host-agent", "../cmd/host-agent"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("building %s: %v\n%s", b.out, err, out)
		}
	}
	return filepath.Join(dir, "host-agent"), nil
})

// freePort returns a loopback port nobody listens on right now.
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runAgent starts `host-agent run` on a program and waits until it serves.
func runAgent(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cmd := exec.Command(bin, append([]string{"run", "--listen", addr}, args...)...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("host-agent stderr:\n%s", stderr.String())
		}
	})
	serving := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ferry: serving") {
				serving <- sc.Text()
			}
		}
	}()
	select {
	case line := <-serving:
		t.Logf("%s", line)
	case <-time.After(2 * time.Minute):
		t.Fatalf("host-agent did not start serving\n%s", stderr.String())
	}
	return addr
}

// curl runs the real curl against the agent.
func curl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "60"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	return string(out)
}

// What `make demo` runs: the example FastAPI app through host-agent run,
// reached with curl.
func TestAgentRunServesTheExample(t *testing.T) {
	requirePythonModules(t, "fastapi")
	requireTool(t, "curl")
	addr := runAgent(t, "../examples/hello", "main:app")
	var got map[string]any
	body := curl(t, "http://"+addr+"/")
	if err := json.Unmarshal([]byte(body), &got); err != nil || got["message"] != "Hello from Ferry" {
		t.Fatalf("GET / returned %q", body)
	}
	if ticks := curl(t, "-N", "http://"+addr+"/stream?n=3"); ticks != "tick 0\ntick 1\ntick 2\n" {
		t.Fatalf("stream returned %q", ticks)
	}
	if code := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "http://"+addr+"/missing"); code != "404" {
		t.Fatalf("unknown route: %s", code)
	}
}
