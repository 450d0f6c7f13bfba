package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseStatHandlesParenthesesInTheName(t *testing.T) {
	line := "4242 (python3 (x) y) S 17 4242 4242 0 -1 4194560 2130 0 0 0 57 13 0 0 20 0 1 0 5 31284 6101 18446744073709551615\n"
	p, err := parseStat(4242, []byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "python3 (x) y" || p.PPID != 17 || p.CPUTicks != 70 {
		t.Fatalf("parsed %+v, want name %q ppid 17 ticks 70", p, "python3 (x) y")
	}
	if _, err := parseStat(1, []byte("1 no-parens S 0")); err == nil {
		t.Fatal("a stat line without a command name parsed")
	}
}

func TestProcessTreeAndUsageSeeChildren(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 30 & sleep 30 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	var tree []procInfo
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if tree = processTree(cmd.Process.Pid); len(tree) == 3 {
			break
		}
	}
	if len(tree) != 3 {
		t.Fatalf("tree of sh with two sleeps: %+v", tree)
	}
	u := startUsage(cmd.Process.Pid)
	time.Sleep(2 * sampleEvery)
	_, _, mem := u.finish()
	if len(mem) != 3 {
		t.Fatalf("memory of %d processes, want 3: %+v", len(mem), mem)
	}
	for _, m := range mem {
		if m.PeakKiB <= 0 || m.PeakKiB < m.StartKiB {
			t.Fatalf("implausible memory %+v", m)
		}
	}
}

func TestParseWrkReadsTheDoneHookLine(t *testing.T) {
	out := "Running 1s test @ http://x/\n  1 threads and 1 connections\nFERRY-BENCH {\"requests\":1200,\"duration_us\":2000000,\"errors\":3,\"non_2xx\":1,\"p50_us\":250,\"p99_us\":900,\"mean_us\":260.5}\n"
	r, err := parseWrk([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 1200 || r.rate() != 600 || r.Errors != 3 || r.Non2xx != 1 || r.P50 != 250*time.Microsecond || r.P99 != 900*time.Microsecond {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := parseWrk([]byte("wrk: connection refused\n")); err == nil {
		t.Fatal("output without a summary parsed")
	}
}

func TestTargetsComputeRatiosAndFlagMisses(t *testing.T) {
	res := func(design, key string, procs int, reqs int64, p50 time.Duration, mem ...ProcMemory) Result {
		return Result{Design: design, Workload: Workload{Key: key}, Procs: procs,
			Load: loadResult{Requests: reqs, Seconds: 1, P50: p50}, Memory: mem}
	}
	helloB := res("B", "hello", 1, 20000, 0)
	helloB.CPUByName = map[string]float64{"init": 0.03, "host-agent": 1}
	helloB2 := res("B", "hello", 2, 20000, 0)
	helloB2.CPUByName = map[string]float64{"init": 0.05}
	rep := &Report{Config: Config{Procs: []int{1, 2}}, Results: []Result{
		res("A", "hello", 1, 30000, 0), res("A′", "hello", 1, 18000, 0), helloB, res("C", "hello", 1, 1000, 0),
		res("A", "hello", 2, 40000, 0), res("A′", "hello", 2, 22000, 0), helloB2,
		res("A", "fastapi", 1, 1000, 0), res("B", "fastapi", 1, 900, 0), res("C", "fastapi", 1, 100, 0),
		res("A", "fastapi", 2, 1000, 0), res("B", "fastapi", 2, 1000, 0),
		res("A′", "hello-1conn", 1, 10, 100*time.Microsecond), res("B", "hello-1conn", 1, 10, 250*time.Microsecond),
		res("A′", "fastapi-1conn", 1, 10, 300*time.Microsecond), res("B", "fastapi-1conn", 1, 10, 300*time.Microsecond),
		res("A", "response-1mib", 1, 100, 0), res("B", "response-1mib", 1, 49, 0),
		res("A", "upload-10mib", 1, 100, 0),
		res("B", "upload-10mib", 1, 50, 0, ProcMemory{Name: "init", StartKiB: 8 << 10, PeakKiB: 9 << 10},
			ProcMemory{Name: "host-agent", StartKiB: 20 << 10, PeakKiB: 40 << 10}),
	}}
	got := map[string]Target{}
	for _, tg := range rep.Targets() {
		got[tg.Goal] = tg
	}
	check := func(goal string, met, missing bool) {
		t.Helper()
		tg, ok := got[goal]
		if !ok {
			t.Fatalf("no target %q in %v", goal, got)
		}
		if tg.Met != met || tg.Missing != missing {
			t.Fatalf("%q: met %v missing %v (%s), want met %v missing %v", goal, tg.Met, tg.Missing, tg.Measured, met, missing)
		}
	}
	for _, c := range []struct {
		goal         string
		met, missing bool
	}{
		{"1. B ≥ 1.0× A′ req/s, hello, 1 process(es)", true, false},
		{"1. B ≥ 1.0× A′ req/s, hello, 2 process(es)", false, false},
		{"1. B ≥ 0.6× A req/s, hello, 1 process(es)", true, false},
		{"1. B ≥ 0.6× A req/s, hello, 2 process(es)", false, false},
		{"2. B ≥ 1.0× A req/s, fastapi, 1 process(es)", false, false},
		{"2. B ≥ 1.0× A req/s, fastapi, 2 process(es)", true, false},
		{"3. B p50 ≤ A′ p50, hello-1conn", false, false},
		{"3. B p50 ≤ A′ p50, fastapi-1conn", true, false},
		{"4. B ≥ 0.5× A req/s, response-1mib, 1 process(es)", false, false},
		{"4. B ≥ 0.5× A req/s, upload-10mib, 1 process(es)", true, false},
		{"4. B ≥ 0.5× A req/s, upload-10mib, 2 process(es)", false, true},
		{"4. memory flat during the 10 MiB uploads (each B process grows < 4 MiB), 1 process(es)", false, false},
		{"5. B: init CPU ≤ 0.02 s / 10k req, hello, 1 process(es)", true, false},  // 0.015 s
		{"5. B: init CPU ≤ 0.02 s / 10k req, hello, 2 process(es)", false, false}, // 0.025 s
		{"issue 7: B ≥ 10× C req/s, hello, 1 process(es)", true, false},
		{"issue 7: B ≥ 10× C req/s, fastapi, 1 process(es)", false, false},
		{"issue 7: init peak RSS ≤ 10 MiB (all B runs)", true, false},
		{"issue 7: host-agent peak RSS ≤ 30 MiB (all B runs)", false, false},
	} {
		check(c.goal, c.met, c.missing)
	}

	// Without results of N, no target of N; with them, its own.
	for goal := range got {
		if strings.Contains(goal, " N ") || strings.Contains(goal, "N:") {
			t.Fatalf("a target of N without N's results: %q", goal)
		}
	}
	withN := &Report{Config: rep.Config, Results: append(append([]Result(nil), rep.Results...), res("N", "hello", 1, 36000, 0))}
	found := false
	for _, tg := range withN.Targets() {
		if tg.Goal == "1. N ≥ 1.0× A′ req/s, hello, 1 process(es)" {
			found = tg.Met && !tg.Missing // 36000 vs 18000
		}
	}
	if !found {
		t.Fatal("no met target 1 of N with N's results")
	}

	// A B without an init process measured (no such process) is not
	// measured rather than met.
	rep.Results[2].CPUByName = nil
	for _, tg := range rep.Targets() {
		if tg.Goal == "5. B: init CPU ≤ 0.02 s / 10k req, hello, 1 process(es)" && !tg.Missing {
			t.Fatalf("init CPU with no init: %+v", tg)
		}
	}
}

func TestMarkdownShowsRatiosToBothAAndCPUByProcess(t *testing.T) {
	b := Result{Design: "B", Workload: Workload{Key: "hello", Name: "hello"}, Procs: 1,
		Load: loadResult{Requests: 20000, Seconds: 1}, CPUSeconds: 2, CPUByName: map[string]float64{"init": 0.04, "host-agent": 1.2, "python3": 0.76}}
	rep := &Report{Config: Config{Procs: []int{1}, Rounds: 1}, Results: []Result{
		{Design: "A", Workload: b.Workload, Procs: 1, Load: loadResult{Requests: 40000, Seconds: 1}},
		{Design: "A′", Workload: b.Workload, Procs: 1, Load: loadResult{Requests: 16000, Seconds: 1}},
		b,
	}}
	var out strings.Builder
	rep.Markdown(&out)
	if !strings.Contains(out.String(), "| 1 | B | 20000 | 0.50× | 1.25× |") || !strings.Contains(out.String(), "| 1.00 (init 0.020) | host-agent 60, python3 38, init 2.0 |") {
		t.Fatalf("B's row lacks its ratios or init's CPU:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "| 1 | A′ | 16000 | 0.40× | 1.00× |") {
		t.Fatalf("A′'s row:\n%s", out.String())
	}
}

// TestMsgpackDesignRoundTrips runs design C for real: the Python guest
// (Debian's python3-msgpack) behind MsgpackFront.
func TestMsgpackDesignRoundTrips(t *testing.T) {
	const python = "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import msgpack").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import msgpack (bash .ci/run installs python3-msgpack): %s", python, out)
	}
	dir := t.TempDir()
	if err := writeApps(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "noisy.py"), []byte(`
async def app(scope, receive, send):
    print("this goes to the captured output, not to the client")
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": scope["query_string"]})
`), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "guest.sock")
	guest := exec.Command(python, filepath.Join(dir, "msgpack_guest.py"), "--socket", sock, "--app", "noisy:app")
	guest.Dir = dir
	guest.Stderr = os.Stderr
	if err := guest.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { guest.Process.Kill(); guest.Wait() }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the guest did not create its socket")
		}
	}
	srv := httptest.NewServer(&MsgpackFront{Socket: sock})
	defer srv.Close()
	body := strings.Repeat("x", 3<<20)
	resp, err := http.Post(srv.URL+"/upload?a=1", "application/octet-stream", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 || resp.Header.Get("X-Length") != "3145728" || string(got) != "a=1" {
		t.Fatalf("status %d, x-length %q, body %q", resp.StatusCode, resp.Header.Get("X-Length"), got)
	}

	// A guest that is gone is a 502, not a hang.
	guest.Process.Kill()
	guest.Wait()
	os.Remove(sock)
	resp, err = http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d with no guest, want 502", resp.StatusCode)
	}
}

func TestTargetsCompareEveryRoundToo(t *testing.T) {
	res := func(design, key string, rates []float64, p50s ...time.Duration) Result {
		return Result{Design: design, Workload: Workload{Key: key}, Procs: 1,
			Load: loadResult{Requests: int64(rates[2]), Seconds: 1, P50: p50s[2]}, Rates: rates, P50s: p50s}
	}
	us := func(n ...int) []time.Duration {
		var out []time.Duration
		for _, x := range n {
			out = append(out, time.Duration(x)*time.Microsecond)
		}
		return out
	}
	// The medians (the third round of each) tie; within the rounds B is
	// ahead in the first two and behind in the other three.
	rep := &Report{Config: Config{Procs: []int{1}}, Results: []Result{
		res("A", "fastapi", []float64{1000, 2000, 1500, 1500, 1800}, us(1, 1, 1, 1, 1)...),
		res("B", "fastapi", []float64{1100, 2100, 1500, 1400, 1700}, us(1, 1, 1, 1, 1)...),
		res("A′", "fastapi-1conn", []float64{1, 1, 1, 1, 1}, us(200, 100, 150, 180, 160)...),
		res("B", "fastapi-1conn", []float64{1, 1, 1, 1, 1}, us(190, 110, 150, 200, 150)...),
	}}
	got := map[string]Target{}
	for _, tg := range rep.Targets() {
		got[tg.Goal] = tg
	}
	for goal, want := range map[string]string{
		"2. B ≥ 1.0× A req/s, fastapi, 1 process(es)": "1.00× (1500 vs 1500 req/s); round by round 1.10 1.05 1.00 0.93 0.94, held in 3 of 5",
		"3. B p50 ≤ A′ p50, fastapi-1conn":            "150 µs vs 150 µs; round by round 0.95 1.10 1.00 1.11 0.94, held in 3 of 5",
	} {
		if tg := got[goal]; tg.Measured != want || !tg.Met {
			t.Errorf("%q: measured %q (met %v), want %q (met: the medians decide)", goal, tg.Measured, tg.Met, want)
		}
	}
}

func TestMedianRoundKeepsEveryRateAndWidensMemory(t *testing.T) {
	round := func(reqs int64, start, peak int64) Result {
		return Result{Design: "B", Load: loadResult{Requests: reqs, Seconds: 1, P50: time.Duration(reqs) * time.Microsecond},
			Memory: []ProcMemory{{Name: "init", PID: 7, StartKiB: start, PeakKiB: peak, PeakAnonKiB: peak / 2}}}
	}
	got := medianRound([]Result{round(100, 5000, 6000), round(300, 6000, 9000), round(200, 6500, 7000)})
	if got.Load.Requests != 200 {
		t.Fatalf("median round has %d requests, want 200", got.Load.Requests)
	}
	if fmt.Sprint(got.Rates) != "[100 300 200]" {
		t.Fatalf("rates %v, want every round in order", got.Rates)
	}
	if fmt.Sprint(got.P50s) != "[100µs 300µs 200µs]" {
		t.Fatalf("p50s %v, want every round's in order", got.P50s)
	}
	if len(got.Memory) != 1 || got.Memory[0].StartKiB != 5000 || got.Memory[0].PeakKiB != 9000 || got.Memory[0].PeakAnonKiB != 4500 {
		t.Fatalf("memory %+v, want the first start and the highest peak", got.Memory)
	}
	failed := round(50, 1, 1)
	failed.Err = fmt.Errorf("wrk: connection refused")
	if got := medianRound([]Result{round(100, 1, 1), failed}); got.Err == nil {
		t.Fatal("a failed round did not fail the result")
	}
}

func TestNginxConfigProxiesWithKeepAliveAndUpgrade(t *testing.T) {
	conf := nginxConfig(nginxSite{Prefix: "/w/Aprime", Port: 8123, Socket: "/w/Aprime/uvicorn.sock", AsRoot: true})
	for _, want := range []string{
		"daemon off;", "worker_processes 1;", "user root root;", "pid /w/Aprime/nginx.pid;", "error_log stderr warn;",
		"access_log off;", "listen 127.0.0.1:8123;", "server unix:/w/Aprime/uvicorn.sock;", "keepalive 128;",
		"proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
		"proxy_set_header Connection $connection_upgrade;", `"" "";`, "client_max_body_size 0;",
		"client_body_temp_path /w/Aprime/client_body;", "proxy_temp_path /w/Aprime/proxy;",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	// Nothing of the system's nginx: every path is under the prefix.
	for _, line := range strings.Split(conf, "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") && f != "/" && !strings.HasPrefix(f, "/w/Aprime/") {
				t.Errorf("path outside the prefix: %q", line)
			}
		}
	}
	if strings.Count(conf, "{") != strings.Count(conf, "}") {
		t.Errorf("unbalanced braces:\n%s", conf)
	}
	if conf := nginxConfig(nginxSite{Prefix: "/w", Port: 1, Socket: "/w/s"}); strings.Contains(conf, "user ") {
		t.Errorf("a master that is not root is given a user:\n%s", conf)
	}
	args := strings.Join(nginxArgs("/w/Aprime"), " ")
	if args != "-p /w/Aprime -c /w/Aprime/nginx.conf -e stderr" {
		t.Errorf("nginx args %q", args)
	}
}

func TestUvicornArgsListenWhereTold(t *testing.T) {
	a := strings.Join(uvicornArgs(plainApp, loopbackListen(8000), 2), " ")
	ap := strings.Join(uvicornArgs(plainApp, []string{"--uds", "/w/u.sock"}, 2), " ")
	common := "-m uvicorn --http httptools --loop uvloop --no-access-log --log-level warning "
	if a != common+"--host 127.0.0.1 --port 8000 --workers 2 plain:app" || ap != common+"--uds /w/u.sock --workers 2 plain:app" {
		t.Fatalf("A: %q\nA′: %q", a, ap)
	}
}

// TestNginxDesignServesEveryWorkload runs design A′ for real (Debian's
// nginx-light in front of uvicorn) through one request of each kind the
// workloads make: hello world, a 1 MiB response, a 10 MiB upload and a
// websocket echo, then stops it and checks nothing is left.
func TestNginxDesignServesEveryWorkload(t *testing.T) {
	const python, nginx = "/usr/bin/python3", "/usr/sbin/nginx"
	if _, err := os.Stat(nginx); err != nil {
		t.Skipf("no %s (make bench installs Debian's nginx-light)", nginx)
	}
	if out, err := exec.Command(python, "-c", "import uvicorn, httptools, uvloop").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import uvicorn with httptools and uvloop (bash .ci/run installs them): %s", python, out)
	}
	cfg := &Config{Python: python, Nginx: nginx, WorkDir: t.TempDir()}
	cfg.AppsDir = filepath.Join(cfg.WorkDir, "apps")
	if err := writeApps(cfg.AppsDir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := startNginx(ctx, cfg, plainApp, 1)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			srv.stop()
		}
	}()
	if len(srv.pids) != 2 {
		t.Fatalf("pids %v, want uvicorn and nginx", srv.pids)
	}
	names := map[string]int{}
	for _, p := range processTree(srv.pids...) {
		names[p.Name]++
	}
	if names["nginx"] != 2 {
		t.Fatalf("processes %v, want nginx's master and one worker", names)
	}

	get := func(path string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(srv.base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	if code, b := get("/"); code != 200 || string(b) != "Hello, world!" {
		t.Fatalf("GET /: %d %q", code, b)
	}
	if code, b := get("/big"); code != 200 || len(b) != 1<<20 {
		t.Fatalf("GET /big: %d, %d bytes", code, len(b))
	}
	resp, err := http.Post(srv.base+"/upload", "application/octet-stream", strings.NewReader(strings.Repeat("x", 10<<20)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "10485760" {
		t.Fatalf("POST /upload: %d %q", resp.StatusCode, b)
	}
	r, err := websocketEchoes(ctx, "ws"+srv.base[len("http"):]+"/ws", 3, 300*time.Millisecond)
	if err != nil || r.Requests == 0 || r.Errors != 0 {
		t.Fatalf("websocket echoes through nginx: %+v, %v", r, err)
	}

	srv.stop()
	stopped = true
	for _, pid := range srv.pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d still runs after stop", pid)
		}
	}
}
