package tests

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// `host-agent program logs -f` shows what the program prints after it
// started, with the stream and worker of each line, and goes on across a
// restart of the program's VM.
func TestAgentLogsFollowAcrossARestart(t *testing.T) {
	requirePythonModules(t, "json")
	requireTool(t, "curl")
	app := writeApp(t, map[string]string{"main.py": scopeApp})
	config := fmt.Sprintf(`{"programs": {"talk": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		"resources": {"vcpus": 1}, "on": {"http": true}}}}`, app)
	agent := serveAgent(t, config, agentOptions{})
	url := "http://" + agent.addr + "/vm/talk"
	curl(t, url+"/before")

	bin, _ := buildAgent()
	ctx, cancel := context.WithCancel(context.Background())
	follow := exec.CommandContext(ctx, bin, "program", "--admin", agent.admin, "logs", "-f", "talk")
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	follow.Stderr = &syncBuffer{}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); follow.Wait() })
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var seen []string
	expect := func(what string) {
		t.Helper()
		deadline := time.After(2 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("logs -f ended (%s) before %q; it printed:\n%s", follow.Stderr, what, strings.Join(seen, "\n"))
				}
				seen = append(seen, l)
				if strings.Contains(l, what) {
					return
				}
			case <-deadline:
				t.Fatalf("logs -f did not print %q; it printed:\n%s", what, strings.Join(seen, "\n"))
			}
		}
	}
	// The line printed before logs -f started is shown first, then one
	// printed after it, tagged with its stream and worker.
	expect("stdout[1] scope request for /before")
	curl(t, url+"/after")
	expect("stdout[1] scope request for /after")

	out, err := exec.Command(bin, "program", "--admin", agent.admin, "restart", "talk").CombinedOutput()
	if err != nil {
		t.Fatalf("program restart: %v\n%s", err, out)
	}
	expect("ferry[0] VM started")
	curl(t, url+"/restarted")
	expect("stdout[1] scope request for /restarted")
}
