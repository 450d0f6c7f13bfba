package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
)

// `host-agent program logs -f` shows what the program prints after it
// started, with the stream and worker of each line, and goes on across a
// restart of the program's VM.
func TestAgentLogsFollowAcrossARestart(t *testing.T) {
	requirePythonModules(t, "json")
	requireTool(t, "curl")
	agent := serveAgent(t, asgiPrograms(writeApp(t, map[string]string{"main.py": scopeApp}), "talk"), agentOptions{})
	url := "http://" + agent.addr + "/vm/talk"
	curl(t, url+"/before")

	bin, _ := buildAgent()
	ctx, cancel := context.WithCancel(context.Background())
	follow := exec.CommandContext(ctx, bin, "program", "--admin", agent.admin, "logs", "-f", "talk")
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	follow.Stderr = &syncbuf.Buffer{}
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

// idApp answers /own with an X-Request-Id of its own, anything else with
// the X-Request-Id it received (none: "-"); /own-broken fails after the
// first part of its body.
const idApp = `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    got = dict(scope["headers"]).get(b"x-request-id", b"-")
    headers = [(b"content-type", b"text/plain")]
    if scope["path"].startswith("/own"):
        headers.append((b"x-request-id", b"the-app-s-own"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["path"] == "/own-broken":
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("broken on purpose")
    await send({"type": "http.response.body", "body": got})
`

// With --log-format json the agent's log is slog's JSON, a line an
// object, and a line about a request carries the id its client saw in
// X-Request-Id: the agent's own, or the one the client sent, which the
// app receives too. An X-Request-Id the app sets reaches the client as it
// was sent, and is logged as app_request_id beside the request's.
func TestAgentJSONLogsCarryTheRequestID(t *testing.T) {
	requirePythonModules(t, "json")
	requireTool(t, "curl")
	stderr := &syncbuf.Buffer{}
	agent := serveAgent(t, asgiPrograms(writeApp(t, map[string]string{"main.py": idApp}), "ids"), agentOptions{stderr: stderr}, "--log-format", "json")
	url := "http://" + agent.addr

	// get returns the response's X-Request-Id and body.
	get := func(path string, header ...string) (id, body string) {
		t.Helper()
		args := []string{"-D", "-", url + path}
		for _, h := range header {
			args = append(args, "-H", h)
		}
		out := curl(t, args...)
		head, body, _ := strings.Cut(out, "\r\n\r\n")
		for _, line := range strings.Split(head, "\r\n") {
			if name, value, ok := strings.Cut(line, ":"); ok && strings.EqualFold(name, "x-request-id") {
				id = strings.TrimSpace(value)
			}
		}
		return id, body
	}
	// loggedWith waits for a record of the agent's log with msg and
	// attrs (an attribute "" must be absent).
	loggedWith := func(msg string, attrs map[string]string) {
		t.Helper()
		waitFor(t, 30*time.Second, func() bool {
		lines:
			for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != msg {
					continue
				}
				for k, v := range attrs {
					if got, ok := rec[k]; v == "" && ok || v != "" && got != v {
						continue lines
					}
				}
				return true
			}
			return false
		}, fmt.Sprintf("no %q record with %v in the agent's log:\n%s", msg, attrs, stderr.String()))
	}
	// logged waits for a record of the agent's log with msg and id.
	logged := func(msg, id string) {
		t.Helper()
		loggedWith(msg, map[string]string{"request_id": id, "app_request_id": ""})
	}

	id, _ := get("/vm/nope/")
	if id == "" {
		t.Fatal("a 404 has no X-Request-Id")
	}
	logged("no such program", id)
	if id, _ := get("/vm/nope/", "X-Request-Id: from-the-client-1"); id != "from-the-client-1" {
		t.Fatalf("the client's request id became %q", id)
	}
	logged("no such program", "from-the-client-1")
	if id, _ := get("/vm/nope/", "X-Request-Id: not well formed"); id == "" || id == "not well formed" {
		t.Fatalf("a malformed request id was kept: %q", id)
	}
	if id, body := get("/vm/ids/", "X-Request-Id: from-the-client-2"); id != "from-the-client-2" || body != "from-the-client-2" {
		t.Fatalf("the app saw %q, the client %q", body, id)
	}
	if id, _ := get("/vm/ids/own"); id != "the-app-s-own" {
		t.Fatalf("the app's own X-Request-Id became %q", id)
	}
	// An app's id of its own reaches the client, and the agent's lines
	// about the request (here: its body broke off after the head) name it
	// by the client's id, with the app's beside it.
	out, _ := exec.Command("curl", "-sS", "--max-time", "60", "-D", "-", "-H", "X-Request-Id: from-the-client-3", url+"/vm/ids/own-broken").Output()
	if !strings.Contains(strings.ToLower(string(out)), "\r\nx-request-id: the-app-s-own\r\n") {
		t.Fatalf("the client did not get the app's X-Request-Id: %q", out)
	}
	loggedWith("response broke off", map[string]string{"request_id": "from-the-client-3", "app_request_id": "the-app-s-own"})

	// Every line the agent wrote on stderr is a JSON object with a time,
	// a level and a message.
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["time"] == nil || rec["level"] == nil || rec["msg"] == nil {
			t.Errorf("not a slog JSON record: %q (%v)", line, err)
		}
	}
}

// asgiPrograms is a configuration of on-demand ASGI programs (main:app,
// one vCPU, on HTTP) of the code in dir, one for each id.
func asgiPrograms(dir string, ids ...string) string {
	var programs []string
	for _, id := range ids {
		programs = append(programs, fmt.Sprintf(`%q: {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
			"resources": {"vcpus": 1}, "on": {"http": true}}`, id, dir))
	}
	return `{"programs": {` + strings.Join(programs, ", ") + `}}`
}
