package bench

import (
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
	_, mem := u.finish()
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
	rep := &Report{Config: Config{Procs: []int{1}}, Results: []Result{
		res("A", "hello", 1, 1000, 0), res("B", "hello", 1, 1500, 0), res("C", "hello", 1, 100, 0),
		res("A", "fastapi", 1, 1000, 0), res("B", "fastapi", 1, 900, 0), res("C", "fastapi", 1, 100, 0),
		res("A", "hello-1conn", 1, 10, 100*time.Microsecond), res("B", "hello-1conn", 1, 10, 250*time.Microsecond),
		res("B", "upload-10mib", 1, 10, 0, ProcMemory{Name: "init", StartKiB: 8 << 10, PeakKiB: 9 << 10},
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
	check("B ≥ 1.0× A req/s, hello, 1 process(es)", true, false)
	check("B ≥ 1.0× A req/s, fastapi, 1 process(es)", false, false)
	check("B ≥ 10× C req/s, hello, 1 process(es)", true, false)
	check("B ≥ 10× C req/s, fastapi, 1 process(es)", false, false)
	check("B p50 within 100 µs of A, hello-1conn", false, false)
	check("B p50 within 100 µs of A, fastapi-1conn", false, true)
	check("init peak RSS ≤ 10 MiB (all B runs)", true, false)
	check("host-agent peak RSS ≤ 30 MiB (all B runs)", false, false)
	check("memory flat during the 10 MiB uploads (each B process grows < 4 MiB), 1 process(es)", false, false)
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

func TestMedianRoundKeepsEveryRateAndWidensMemory(t *testing.T) {
	round := func(reqs int64, start, peak int64) Result {
		return Result{Design: "B", Load: loadResult{Requests: reqs, Seconds: 1},
			Memory: []ProcMemory{{Name: "init", PID: 7, StartKiB: start, PeakKiB: peak, PeakAnonKiB: peak / 2}}}
	}
	got := medianRound([]Result{round(100, 5000, 6000), round(300, 6000, 9000), round(200, 6500, 7000)})
	if got.Load.Requests != 200 {
		t.Fatalf("median round has %d requests, want 200", got.Load.Requests)
	}
	if fmt.Sprint(got.Rates) != "[100 300 200]" {
		t.Fatalf("rates %v, want every round in order", got.Rates)
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
