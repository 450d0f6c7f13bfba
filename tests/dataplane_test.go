package tests

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// dataPlaneApp is a plain ASGI app whose answers say which worker
// (process) served them: /pid; /hold waits until /release (every worker
// sees the VM's /tmp) and counts itself in /held; /die kills its worker
// in the middle of answering; /stream sends five chunks; /big sends
// dataPlaneBig in three pieces; /upload answers its body's SHA-256; /ws
// echoes.
const dataPlaneApp = `import asyncio, hashlib, os, signal, uuid
BIG = bytes((i * 7 + i // 251) % 256 for i in range(1005 << 10))
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "%d: %s" % (os.getpid(), m.get("text"))})
    path = scope["path"]
    body = str(os.getpid()).encode()
    if path == "/hold":
        open("/tmp/held-" + uuid.uuid4().hex, "w").close()
        while not os.path.exists("/tmp/release"):
            await asyncio.sleep(0.02)
    elif path == "/held":
        body = str(len([n for n in os.listdir("/tmp") if n.startswith("held-")])).encode()
    elif path == "/release":
        open("/tmp/release", "w").close()
    elif path == "/die":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        os.kill(os.getpid(), signal.SIGKILL)
    if path == "/upload":  # the body's SHA-256
        digest = hashlib.sha256()
        more = True
        while more:
            m = await receive()
            digest.update(m.get("body", b""))
            more = m.get("more_body", False)
        body = digest.hexdigest().encode()
    if path == "/big":  # 1005 KiB in three pieces: two big, one small
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        at = 0
        for size in (300 << 10, 5 << 10, 700 << 10):
            await send({"type": "http.response.body", "body": BIG[at:at + size], "more_body": True})
            at += size
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(5):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
`

// wsEcho sends "hello" and "ferry" over a websocket to url with a real
// client (Python's websockets) and returns what it printed: each answer
// on a line.
func wsEcho(url string) ([]byte, error) {
	const script = `
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        for m in ("hello", "ferry"):
            await ws.send(m)
            print(await ws.recv())
asyncio.run(main())
`
	return exec.Command(debianPython, "-c", script, url).CombinedOutput()
}

// dataPlaneFronts are the agent's two HTTP fronts (--front): the data
// plane's tests run against each.
var dataPlaneFronts = []string{"net/http", "loop"}

// dataPlaneAgent serves dataPlaneApp with two workers behind front and
// returns its address and a function reading the program's data plane
// status.
func dataPlaneAgent(t *testing.T, front string) (string, func() dataPlaneStatus) {
	t.Helper()
	requirePythonModules(t, "asyncio")
	code := writeApp(t, map[string]string{"main.py": dataPlaneApp})
	config := fmt.Sprintf(`{"idle_timeout": "10m", "programs": {
		"dp": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		       "resources": {"vcpus": 1, "workers": 2, "seconds": 60}, "on": {"http": true}}}}`, code)
	p := serveAgent(t, config, agentOptions{}, "--front", front)
	bin := mustAgent(t)
	status := func() dataPlaneStatus {
		t.Helper()
		out, err := exec.Command(bin, "program", "--admin", p.admin, "status", "dp", "--json").Output()
		if err != nil {
			t.Fatalf("program status: %v", err)
		}
		var st struct {
			DataPlane *dataPlaneStatus `json:"data_plane"`
		}
		if err := json.Unmarshal(out, &st); err != nil || st.DataPlane == nil {
			t.Fatalf("program status %s: %v", out, err)
		}
		return *st.DataPlane
	}
	return p.addr, status
}

// dataPlaneStatus is the data_plane of `program status --json`.
type dataPlaneStatus struct {
	Workers int   `json:"workers"`
	Direct  int64 `json:"direct_requests"`
	ViaInit int64 `json:"via_init_requests"`
}

// get fetches url and returns the status and body (status 0: the
// request failed).
func get(url string) (int, string) {
	c := &http.Client{Timeout: 2 * time.Minute}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(b)
}

// dataPlaneBig is the body of dataPlaneApp's /big.
func dataPlaneBig() []byte {
	b := make([]byte, 1005<<10)
	for i := range b {
		b[i] = byte((i*7 + i/251) % 256)
	}
	return b
}

// getAll fetches url n times at once and returns the bodies of the
// answers, failing on any that is not a 200.
func getAll(t *testing.T, url string, n int) []string {
	t.Helper()
	bodies := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body := get(url)
			if status != 200 {
				t.Errorf("%s: %d %s", url, status, body)
			}
			bodies[i] = body
		}()
	}
	wg.Wait()
	return bodies
}

// distinct returns the set of values.
func distinct(vs []string) map[string]bool {
	m := map[string]bool{}
	for _, v := range vs {
		m[v] = true
	}
	return m
}

// cpuTicks is a process's user and system CPU time, in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}

// The agent sends an ASGI program's requests to its two workers directly,
// none through init (the instance's counters say so, and init's CPU time
// stays flat: logged, not asserted), spread over both; streaming responses
// travel the same way, and websockets too under both fronts (the
// event-loop front hands them to net/http, whose session with each worker
// it relays on that worker's channel).
func TestDataPlaneServesWorkersDirectly(t *testing.T) {
	requirePythonModules(t, "websockets")
	for _, front := range dataPlaneFronts {
		t.Run(front, func(t *testing.T) { testDataPlaneServesWorkersDirectly(t, front) })
	}
}

func testDataPlaneServesWorkersDirectly(t *testing.T, front string) {
	addr, status := dataPlaneAgent(t, front)
	url := "http://" + addr + "/vm/dp"
	if s, body := get(url + "/pid"); s != 200 {
		t.Fatalf("first request: %d %s", s, body)
	}
	waitFor(t, time.Minute, func() bool { return status().Workers == 2 }, "the agent did not hold both workers' sessions")
	before := status()

	_, init, workers := wsHostileFindProcs(t, addr)
	if len(workers) != 2 {
		t.Fatalf("%d workers", len(workers))
	}
	initCPU := cpuTicks(t, init.pid)
	pids := map[string]bool{}
	const rounds, width = 25, 16
	for range rounds {
		for pid := range distinct(getAll(t, url+"/pid", width)) {
			pids[pid] = true
		}
	}
	if len(pids) != 2 {
		t.Errorf("answers came from %d processes, want both workers: %v", len(pids), pids)
	}
	t.Logf("init's CPU during %d requests: %d ticks", rounds*width, cpuTicks(t, init.pid)-initCPU)

	// A big answer in pieces, the big ones through the shared body buffer
	// under the loop front (SPEC.md §11.1): served by the loop, and by
	// net/http (a TE field is not the loop's) through its side session.
	// Each worker took the buffer the loop sent it; net/http sends none.
	want := dataPlaneBig()
	for _, te := range []string{"", "trailers"} {
		req, _ := http.NewRequest("GET", url+"/big", nil)
		if te != "" {
			req.Header.Set("TE", te)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, want) {
			t.Fatalf("/big (TE %q): %d, %d bytes (want %d), equal %v, %v", te, resp.StatusCode, len(got), len(want), bytes.Equal(got, want), err)
		}
	}
	// A big upload, through the request ring under the loop front.
	resp, err := http.Post(url+"/upload", "application/octet-stream", bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	digest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if sum := sha256.Sum256(want); err != nil || resp.StatusCode != 200 || string(digest) != hex.EncodeToString(sum[:]) {
		t.Fatalf("/upload: %d %q, want the digest %x (%v)", resp.StatusCode, digest, sum, err)
	}
	for _, w := range workers {
		maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", w.pid))
		if err != nil {
			t.Fatal(err)
		}
		if has := strings.Contains(string(maps), "memfd:ferry-shared-body"); has != (front == "loop") {
			t.Errorf("worker %d maps the shared body buffer: %v, under the %s front", w.pid, has, front)
		}
	}

	// A streamed response, chunk by chunk.
	if s, body := get(url + "/stream"); s != 200 || body != "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n" {
		t.Fatalf("stream: %d %q", s, body)
	}
	// A websocket, echoed by a worker.
	out, err := wsEcho("ws://" + addr + "/vm/dp/ws")
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || len(lines) != 2 || !strings.HasSuffix(lines[0], ": hello") || !strings.HasSuffix(lines[1], ": ferry") {
		t.Fatalf("websocket client: %v\n%s", err, out)
	}
	after := status()
	// Under both fronts: the loop serves the plain requests itself and
	// relays the stream and the websocket, which net/http serves, on
	// the workers' channels (its side sessions).
	direct, viaInit := int64(rounds*width+5), int64(0) // (the two /big, /upload, /stream and /ws)
	if n := after.Direct - before.Direct; n != direct {
		t.Errorf("%d requests went to the workers directly, want %d (%+v -> %+v)", n, direct, before, after)
	}
	if n := after.ViaInit - before.ViaInit; n != viaInit {
		t.Errorf("%d requests went through init, want %d: %+v -> %+v", n, viaInit, before, after)
	}
}

// A worker killed in the middle of requests: only its requests fail (502),
// the other worker's complete; init restarts it, the agent adds its new
// session, and it serves again.
func TestDataPlaneWorkerCrashResetsOnlyItsStreams(t *testing.T) {
	for _, front := range dataPlaneFronts {
		t.Run(front, func(t *testing.T) { testDataPlaneWorkerCrashResetsOnlyItsStreams(t, front) })
	}
}

func testDataPlaneWorkerCrashResetsOnlyItsStreams(t *testing.T, front string) {
	addr, status := dataPlaneAgent(t, front)
	url := "http://" + addr + "/vm/dp"
	if s, body := get(url + "/pid"); s != 200 {
		t.Fatalf("first request: %d %s", s, body)
	}
	waitFor(t, time.Minute, func() bool { return status().Workers == 2 }, "the agent did not hold both workers' sessions")

	// Four held requests, spread over the workers (fewest outstanding
	// first).
	type answer struct {
		status int
		body   string
	}
	const held = 4
	answers := make(chan answer, held)
	for i := range held {
		go func() {
			s, b := get(url + "/hold")
			answers <- answer{s, b}
		}()
		// One at a time, so that they alternate between the workers.
		waitFor(t, time.Minute, func() bool { _, n := get(url + "/held"); return n == strconv.Itoa(i+1) }, "a held request did not arrive")
	}
	// The next request goes to worker 1 (a tie: the first), which dies
	// answering it.
	if s, body := get(url + "/die"); s == 200 {
		t.Fatalf("the dying worker's request: %d %q", s, body)
	}
	// init restarts it and passes its new channel.
	waitFor(t, time.Minute, func() bool { return status().Workers == 2 }, "the restarted worker's session did not join")
	if s, _ := get(url + "/release"); s != 200 {
		t.Fatalf("release: %d", s)
	}
	var ok, failed []answer
	for range held {
		select {
		case a := <-answers:
			if a.status == 200 {
				ok = append(ok, a)
			} else {
				failed = append(failed, a)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("a held request never ended")
		}
	}
	// The dead worker's requests were reset with it, the other worker's
	// completed. Which worker each held request went to depends on the
	// outstanding counts at the moment (the polls of /held count too), so
	// the split is not fixed: each side must have some, and every completed
	// request must be the survivor's.
	if len(ok) == 0 || len(failed) == 0 {
		t.Fatalf("completed %+v, failed %+v: want some of each", ok, failed)
	}
	for _, a := range ok[1:] {
		if a.body != ok[0].body {
			t.Fatalf("completed requests came from two workers, one of them dead: %+v", ok)
		}
	}
	for _, a := range failed {
		if a.status != http.StatusBadGateway {
			t.Errorf("a request of the dead worker got %d %s, want 502", a.status, a.body)
		}
	}
	survivor := ok[0].body
	// Both serve again, the new worker a new process.
	pids := map[string]bool{}
	for range 10 {
		for pid := range distinct(getAll(t, url+"/pid", 8)) {
			pids[pid] = true
		}
	}
	if len(pids) != 2 || !pids[survivor] {
		t.Fatalf("after the restart, answers from %v (the survivor is %s)", pids, survivor)
	}
	if st := status(); st.ViaInit != 0 {
		t.Logf("requests through init while the worker restarted: %+v", st)
	}
}
