package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
)

// buildAgent compiles host-agent next to buildInit's init, as make build
// lays them out (the agent finds init beside itself).
var buildAgent = sync.OnceValues(func() (string, error) {
	initBin, err := buildInit()
	if err != nil {
		return "", err
	}
	return goBuildInto(filepath.Dir(initBin), "host-agent", "../cmd/host-agent")
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

// agentOptions say how a test starts host-agent.
type agentOptions struct {
	ns     *testNetns // run inside this network namespace (nil: the machine's)
	env    []string   // added to the agent's environment
	stderr io.Writer  // where its stderr goes (default: agentProc.out)
}

// agentProc is a host-agent a test started; it is stopped (SIGTERM, then
// SIGKILL) when the test ends, and its output shown if the test failed.
type agentProc struct {
	addr   string          // its HTTP listener
	admin  string          // serve: its admin socket, when the test did not name one
	cmd    *exec.Cmd       // the agent itself
	out    *syncbuf.Buffer // what it printed
	exited chan struct{}   // closed when it has exited
}

// stop ends the agent with SIGTERM (SIGKILL after 20 s) and waits for it.
func (p *agentProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// startAgent starts `host-agent MODE --listen ADDR ARGS...` and waits until
// it says it serves.
func startAgent(t *testing.T, mode string, opt agentOptions, args ...string) *agentProc {
	t.Helper()
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProc{addr: freePort(t), out: &syncbuf.Buffer{}}
	args = append([]string{mode, "--listen", p.addr}, args...)
	p.cmd = exec.Command(bin, args...)
	if opt.ns != nil {
		p.cmd = opt.ns.command(bin, args...)
	}
	p.cmd.Env = append(os.Environ(), opt.env...)
	p.cmd.Stderr = p.out
	if opt.stderr != nil {
		p.cmd.Stderr = opt.stderr
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving, exited := make(chan string, 1), make(chan struct{})
	p.exited = exited
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(p.out, sc.Text())
			if strings.HasPrefix(sc.Text(), "ferry: serving") {
				select {
				case serving <- sc.Text():
				default:
				}
			}
		}
	}()
	go func() { p.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGCONT) // in case the test stopped it
		p.stop()
		if t.Failed() {
			t.Logf("host-agent %s output:\n%s", mode, p.out.String())
		}
	})
	select {
	case line := <-serving:
		t.Logf("%s", line)
	case <-exited:
		if opt.ns != nil {
			t.Logf("the namespace it ran in:\n%s", opt.ns.describe())
		}
		t.Fatalf("host-agent %s exited before serving:\n%s", mode, p.out.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("host-agent %s did not start serving\n%s", mode, p.out.String())
	}
	return p
}

// runAgent starts `host-agent run` on a program and waits until it serves.
func runAgent(t *testing.T, args ...string) (string, *syncbuf.Buffer) {
	t.Helper()
	p := startAgent(t, "run", agentOptions{}, args...)
	return p.addr, p.out
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
	metricsAddr := freePort(t)
	addr, _ := runAgent(t, "--metrics-listen", metricsAddr, "../examples/hello", "main:app")
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

	// The metrics count what happened, and move with the next request.
	if h := curl(t, "http://"+metricsAddr+"/healthz"); h != "ok\n" {
		t.Fatalf("healthz: %q", h)
	}
	m := curl(t, "http://"+metricsAddr+"/metrics")
	for series, want := range map[string]float64{
		`ferry_requests_total{program="main",status="200"}`:    2,
		`ferry_requests_total{program="main",status="404"}`:    1,
		`ferry_cold_starts_total{program="main",result="ok"}`:  1,
		`ferry_cold_start_seconds_count{program="main"}`:       1,
		`ferry_request_duration_seconds_count{program="main"}`: 3,
		`ferry_running_vms`: 1,
	} {
		if got := metricValue(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	curl(t, "http://"+addr+"/")
	m = curl(t, "http://"+metricsAddr+"/metrics")
	if got := metricValue(t, m, `ferry_requests_total{program="main",status="200"}`); got != 3 {
		t.Errorf("requests counter did not move: %v", got)
	}
}

// metricValue finds one series in Prometheus text output.
func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	t.Errorf("no series %s in /metrics", series)
	return -1
}

const limitsApp = `
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        while True:   # never answers; reports the disconnect
            msg = await receive()
            if msg["type"] == "http.disconnect":
                print("app saw http.disconnect", flush=True)
                return
    size, more = 0, True
    while more:
        msg = await receive()
        size += len(msg.get("body", b""))
        more = msg.get("more_body", False)
    print("app got", size, "bytes", flush=True)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(size).encode()})
`

// Limits through the agent: a request past its time limit is a 504 and
// the app sees http.disconnect; bodies over the limit are 413, with or
// without a Content-Length; errors are JSON with a request id.
func TestAgentTimeoutAndBodyLimit(t *testing.T) {
	requirePythonModules(t, "asyncio")
	requireTool(t, "curl")
	code := writeApp(t, map[string]string{"main.py": limitsApp})
	addr, agentLog := runAgent(t, "--timeout", "2s", "--max-body", "1000", "--workers", "1", code, "main:app")
	url := "http://" + addr

	out := curl(t, "-w", "\n%{http_code}", url+"/sleep")
	i := strings.LastIndexByte(out, '\n')
	body, code504 := out[:i], out[i+1:]
	var errDoc map[string]string
	if code504 != "504" || json.Unmarshal([]byte(body), &errDoc) != nil || errDoc["request_id"] == "" {
		t.Fatalf("timeout answered %q", out)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(agentLog.String(), "app saw http.disconnect") },
		"the app did not see http.disconnect after the timeout")
	if got := curl(t, "-w", " %{http_code}", "--data-binary", strings.Repeat("x", 999), url+"/up"); got != "999 200" {
		t.Fatalf("body under the limit: %q", got)
	}
	if got := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", strings.Repeat("x", 1001), url+"/up"); got != "413" {
		t.Fatalf("body over the limit with Content-Length: %s", got)
	}
	chunked := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked", "--data-binary", strings.Repeat("y", 5000), url+"/up")
	if chunked != "413" {
		t.Fatalf("chunked body over the limit: %s", chunked)
	}
}

// waitFor polls cond until it holds or patience runs out.
func waitFor(t *testing.T, patience time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const scopeApp = `
import json
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    print("scope request for", scope["path"], flush=True)
    body = json.dumps({"root_path": scope["root_path"], "path": scope["path"], "raw_path": scope["raw_path"].decode(),
                       "query": scope["query_string"].decode()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
`

// startServe runs `host-agent serve` on a configuration document.
func startServe(t *testing.T, config string, extra ...string) (string, *syncbuf.Buffer) {
	t.Helper()
	p := serveAgent(t, config, agentOptions{}, extra...)
	return p.addr, p.out
}

// serveAgent runs `host-agent serve` on a configuration document, with an
// admin socket of its own unless args name one.
func serveAgent(t *testing.T, config string, opt agentOptions, args ...string) *agentProc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.json")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	admin := ""
	if !slices.Contains(args, "--admin") {
		admin = filepath.Join(dir, "admin.sock")
		args = append(args, "--admin", admin)
	}
	// The agent's state (its dqlite cluster of one) is the test's own.
	if !slices.Contains(args, "--state-dir") {
		args = append(args, "--state-dir", filepath.Join(dir, "state"))
	}
	p := startAgent(t, "serve", opt, append([]string{"--config", path}, args...)...)
	p.admin = admin
	return p
}

// host-agent serve routes /vm/{id}/ (with root_path) and host names to
// programs, answers 404 for unknown ones and for programs not on HTTP, and
// starts persistent programs at once.
func TestAgentServeRoutesPrograms(t *testing.T) {
	requirePythonModules(t, "fastapi")
	requireTool(t, "curl")
	scope := writeApp(t, map[string]string{"main.py": scopeApp})
	hello, _ := filepath.Abs("../examples/hello")
	config := fmt.Sprintf(`{"idle_timeout": "5m", "programs": {
		"hello":  {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q}, "on": {"http": true}},
		"scope":  {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		           "resources": {"vcpus": 1, "seconds": 10}, "on": {"http": true}},
		"hidden": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		           "resources": {"vcpus": 1}, "on": {"http": false, "persistent": true}}}}`, hello, scope, scope)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	addr, _ := startServe(t, config, "--admin", sock)
	url := "http://" + addr

	// The persistent program runs before any request. (The metrics are on
	// the admin API, not on the public listener.)
	waitFor(t, time.Minute, func() bool {
		return metricValue(t, curl(t, "--unix-socket", sock, "http://admin/metrics"), "ferry_running_vms") == 1
	}, "the persistent program did not start")

	var got map[string]any
	if err := json.Unmarshal([]byte(curl(t, url+"/vm/hello/")), &got); err != nil || got["message"] != "Hello from Ferry" {
		t.Fatalf("/vm/hello/: %v %v", got, err)
	}
	if err := json.Unmarshal([]byte(curl(t, url+"/vm/scope/a%20b/c?x=1")), &got); err != nil ||
		got["root_path"] != "/vm/scope" || got["path"] != "/a b/c" || got["raw_path"] != "/a%20b/c" || got["query"] != "x=1" {
		t.Fatalf("/vm/scope scope: %v %v", got, err)
	}
	if err := json.Unmarshal([]byte(curl(t, "-H", "Host: scope.example.org", url+"/by/host")), &got); err != nil ||
		got["root_path"] != "" || got["path"] != "/by/host" {
		t.Fatalf("host routing: %v %v", got, err)
	}
	for _, path := range []string{"/vm/nope/", "/vm/hidden/", "/elsewhere"} {
		out := curl(t, "-w", "\n%{http_code}", url+path)
		i := strings.LastIndexByte(out, '\n')
		var errDoc map[string]string
		if out[i+1:] != "404" || json.Unmarshal([]byte(out[:i]), &errDoc) != nil || errDoc["request_id"] == "" {
			t.Errorf("%s answered %q", path, out)
		}
	}

	// The admin API: list, logs with the app's print(), stop, a duplicate
	// deploy refused, delete.
	bin, _ := buildAgent()
	programCmd := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"program", "--admin", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := programCmd("list", "--json")
	var list []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 3 {
		t.Fatalf("program list: %v %s", err, out)
	}
	if out, err := programCmd("list"); err != nil || !strings.Contains(out, "hidden") || !strings.Contains(out, "RUNNING") {
		t.Fatalf("program list for people: %v %s", err, out)
	}
	if out, err := programCmd("logs", "scope"); err != nil || !strings.Contains(out, "stdout[1] scope request for /a b/c") {
		t.Fatalf("program logs: %v %s", err, out)
	}
	if out, err := programCmd("stop", "scope"); err != nil || !strings.Contains(out, "running:    false") {
		t.Fatalf("program stop: %v %s", err, out)
	}
	manifestPath := filepath.Join(t.TempDir(), "m.json")
	os.WriteFile(manifestPath, []byte(fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, "on": {"http": true}}`, scope)), 0o644)
	if out, err := programCmd("deploy", "scope", manifestPath); err == nil || !strings.Contains(out, "already deployed") {
		t.Fatalf("duplicate deploy: %v %s", err, out)
	}
	if out, err := programCmd("deploy", "second", manifestPath); err != nil || !strings.Contains(out, "deployed second") {
		t.Fatalf("deploy: %v %s", err, out)
	}
	if err := json.Unmarshal([]byte(curl(t, url+"/vm/second/x")), &got); err != nil || got["root_path"] != "/vm/second" {
		t.Fatalf("deployed program: %v %v", got, err)
	}
	if out, err := programCmd("delete", "second"); err != nil {
		t.Fatalf("delete: %v %s", err, out)
	}
	if code := curl(t, "-o", "/dev/null", "-w", "%{http_code}", url+"/vm/second/x"); code != "404" {
		t.Fatalf("deleted program answered %s", code)
	}
}

// A bad configuration is refused at startup, naming the field.
func TestAgentServeRejectsBadConfiguration(t *testing.T) {
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.json")
	os.WriteFile(path, []byte(`{"programs": {"ok": {"code": {"entrypoint": "main:app", "interface": "wsgi", "path": "."}, "on": {"http": true}}}}`), 0o644)
	out, err := exec.Command(bin, "serve", "--config", path).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "programs.ok.code.interface") {
		t.Fatalf("bad configuration: %v\n%s", err, out)
	}
}

// A websocket through the agent to an ASGI program, with a real client.
func TestAgentWebSocketEcho(t *testing.T) {
	requirePythonModules(t, "fastapi", "websockets")
	addr, _ := runAgent(t, "../examples/hello", "main:app")
	out, err := wsEcho("ws://" + addr + "/ws")
	if err != nil || string(out) != "echo: hello\necho: ferry\n" {
		t.Fatalf("websocket client: %v\n%s", err, out)
	}
}

// The admin API on TCP needs a token, and refuses calls without it.
func TestAdminAPIOnTCPNeedsAToken(t *testing.T) {
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.json")
	os.WriteFile(path, []byte(`{"programs": {}}`), 0o644)
	out, err := exec.Command(bin, "serve", "--config", path, "--listen", freePort(t), "--admin", freePort(t), "--admin-token", "",
		"--state-dir", filepath.Join(dir, "state")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs a token") {
		t.Fatalf("TCP admin without a token: %v\n%s", err, out)
	}
	adminAddr := freePort(t)
	startServe(t, `{"programs": {}}`, "--admin", adminAddr, "--admin-token", "s3cret")
	waitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", adminAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "admin API did not listen")
	if out, err := exec.Command(bin, "program", "--admin", adminAddr, "--token", "wrong", "list").CombinedOutput(); err == nil || !strings.Contains(string(out), "wrong admin token") {
		t.Fatalf("wrong token: %v %s", err, out)
	}
	if out, err := exec.Command(bin, "program", "--admin", adminAddr, "--token", "s3cret", "list", "--json").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "[]" {
		t.Fatalf("right token: %v %s", err, out)
	}
}

// A streaming response reaches curl chunk by chunk: curl prints the first
// chunk while the app still holds back the last.
func TestAgentStreamsToCurlChunkByChunk(t *testing.T) {
	requirePythonModules(t, "starlette")
	requireTool(t, "curl")
	code := writeApp(t, map[string]string{"main.py": starletteApp})
	addr, _ := runAgent(t, "--workers", "1", code, "main:app")
	cmd := exec.Command("curl", "-sS", "-N", "--max-time", "60", "http://"+addr+"/chunks")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	br := bufio.NewReader(stdout)
	first, err := br.ReadString('\n')
	if err != nil || first != "chunk 0000\n" {
		t.Fatalf("first chunk %q %v", first, err)
	}
	// curl has the first chunk; the app is parked before the last.
	if out := curl(t, "http://"+addr+"/release"); !strings.Contains(out, "released") {
		t.Fatalf("release: %s", out)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(first+string(rest), "\n"), "\n")
	if len(lines) != 1000 || lines[999] != "chunk 0999" {
		t.Fatalf("curl got %d lines, last %q", len(lines), lines[len(lines)-1])
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("curl: %v", err)
	}
}

// Through the agent with real clients: 20 concurrent first requests cause
// one boot; the idle program is stopped and the next request boots it
// again without the client noticing.
func TestAgentOneBootForConcurrentFirstRequestsThenIdleStop(t *testing.T) {
	requirePythonModules(t, "asyncio")
	requireTool(t, "curl")
	code := writeApp(t, map[string]string{"main.py": scopeApp})
	metricsAddr := freePort(t)
	addr, _ := startServe(t, fmt.Sprintf(`{"idle_timeout": "1s", "programs": {
		"burst": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		          "resources": {"vcpus": 1}, "on": {"http": true}}}}`, code),
		"--admin", filepath.Join(t.TempDir(), "admin.sock"), "--metrics-listen", metricsAddr)
	url := "http://" + addr
	var wg sync.WaitGroup
	codes := make([]string, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, _ := exec.Command("curl", "-sS", "--max-time", "120", "-o", "/dev/null", "-w", "%{http_code}", url+"/vm/burst/").Output()
			codes[i] = string(out)
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != "200" {
			t.Fatalf("request %d: %q", i, c)
		}
	}
	metricsURL := "http://" + metricsAddr + "/metrics"
	m := curl(t, metricsURL)
	if boots := metricValue(t, m, `ferry_cold_starts_total{program="burst",result="ok"}`); boots != 1 {
		t.Fatalf("%v boots for 20 concurrent first requests", boots)
	}
	waitFor(t, 30*time.Second, func() bool { return metricValue(t, curl(t, metricsURL), "ferry_running_vms") == 0 },
		"the idle program was not stopped")
	if c := curl(t, "-o", "/dev/null", "-w", "%{http_code}", url+"/vm/burst/again"); c != "200" {
		t.Fatalf("request after the idle stop: %s", c)
	}
	if boots := metricValue(t, curl(t, metricsURL), `ferry_cold_starts_total{program="burst",result="ok"}`); boots != 2 {
		t.Fatalf("%v boots after the idle stop", boots)
	}
}

// A persistent program killed with SIGKILL comes back by itself.
func TestAgentPersistentProgramSurvivesSIGKILL(t *testing.T) {
	requirePythonModules(t, "asyncio")
	code := writeApp(t, map[string]string{"main.py": scopeApp})
	sock := filepath.Join(t.TempDir(), "admin.sock")
	startServe(t, fmt.Sprintf(`{"programs": {
		"keeper": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		           "resources": {"vcpus": 1}, "on": {"http": false, "persistent": true}}}}`, code), "--admin", sock)
	bin, _ := buildAgent()
	status := func() map[string]any {
		out, err := exec.Command(bin, "program", "--admin", sock, "status", "keeper", "--json").Output()
		var st map[string]any
		if err != nil || json.Unmarshal(out, &st) != nil {
			return nil
		}
		return st
	}
	var vm string
	waitFor(t, time.Minute, func() bool {
		st := status()
		if st != nil && st["running"] == true {
			vm = st["vm"].(string)
		}
		return vm != ""
	}, "the persistent program did not start")
	var pid int
	if _, err := fmtSscanPid(vm, &pid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitFor(t, time.Minute, func() bool {
		st := status()
		return st != nil && st["running"] == true && st["vm"] != vm
	}, "the persistent program did not come back")
	t.Logf("%s killed; back as a new VM after %s (first backoff 1s)", vm, time.Since(killed).Round(time.Millisecond))
}

// A program with "environment": {"internet": true} gets a veth pair: its
// own IPv4 and IPv6 addresses answer from the host.
func TestAgentSandboxNetworking(t *testing.T) {
	requireRoot(t)
	requirePythonModules(t, "http.server")
	code := writeApp(t, map[string]string{"server.py": `#!/usr/bin/python3
import os, socket
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello over %s\n" % self.client_address[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

` + dualStackServer + `
Server(("::", int(os.environ["PORT"])), H).serve_forever()
`})
	if err := chmodX(code + "/server.py"); err != nil {
		t.Fatal(err)
	}
	// The agent runs in a namespace of the test's: the veth's host end is
	// made there, and so is every packet to the VM's addresses.
	ns := newTestNetns(t)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	addr := serveAgent(t, fmt.Sprintf(`{"programs": {
		"net": {"code": {"encoding": "plain", "entrypoint": "server.py", "interface": "executable", "path": %q},
		        "environment": {"internet": true}, "on": {"http": true}}}}`, code), agentOptions{ns: ns}, "--admin", sock).addr
	if out := ns.curl(t, "http://"+addr+"/vm/net/"); !strings.HasPrefix(out, "hello over") {
		t.Fatalf("through the agent: %q", out)
	}
	bin, _ := buildAgent()
	out, err := exec.Command(bin, "program", "--admin", sock, "status", "net", "--json").Output()
	var st struct{ IPv4, IPv6 string }
	if err != nil || json.Unmarshal(out, &st) != nil || st.IPv4 == "" || st.IPv6 == "" {
		t.Fatalf("status: %v %s", err, out)
	}
	for _, a := range []string{st.IPv4, st.IPv6} {
		ip, _, _ := strings.Cut(a, "/")
		got := ns.curl(t, "-g", "http://"+net.JoinHostPort(ip, "8080")+"/")
		if !strings.HasPrefix(got, "hello over") {
			t.Fatalf("%s answered %q", ip, got)
		}
		t.Logf("VM address %s answered: %s", ip, strings.TrimSpace(got))
	}
}
