package tests

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
)

// apiProxyApp makes the guest API calls the test asks for, from inside
// its VM, with the standard library as a program would: /call?method=M&
// path=P (the request body is the call's) answers the call's status,
// Retry-After and body; /flood?n=N&path=P makes N calls in a row and
// answers how many got each status (8 at a time) and how long it took.
const apiProxyApp = `
import asyncio, base64, concurrent.futures, json, os, time, urllib.error, urllib.request
from urllib.parse import parse_qs

API = os.environ.get("FERRY_API_URL", "")

def call(method, path, body):
    req = urllib.request.Request(API + path, data=body if method == "PUT" else None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()

def flood(n, path):
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: call("GET", path, None)[0], range(n)))
    counts = {str(s): statuses.count(s) for s in set(statuses)}
    return {"counts": counts, "seconds": time.monotonic() - start}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    if scope["path"].endswith("/flood"):
        out = await asyncio.to_thread(flood, int(q["n"]), q["path"])
    else:
        status, headers, data = await asyncio.to_thread(call, q["method"], q["path"], body)
        out = {"status": status, "retry_after": headers.get("Retry-After", ""), "body": base64.b64encode(data).decode()}
    data = json.dumps(out).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})
`

// kvAnswer is a guest API call's answer, as the program in the VM got it.
type kvAnswer struct {
	Status     int    `json:"status"`
	RetryAfter string `json:"retry_after"`
	Body       []byte `json:"body"`
}

// code is the error code of a JSON error answer.
func (a kvAnswer) code() string {
	var e struct{ Error struct{ Code string } }
	json.Unmarshal(a.Body, &e)
	return e.Error.Code
}

func (a kvAnswer) String() string { return fmt.Sprintf("%d %s", a.Status, a.Body) }

// guestCall has program id, served by the agent at addr, call its guest
// API: method on path with body.
func guestCall(t *testing.T, addr, id, method, path, body string) kvAnswer {
	t.Helper()
	a, err := guestDo(addr, id, method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// guestDo is guestCall, with an error where the program did not answer.
func guestDo(addr, id, method, path, body string) (kvAnswer, error) {
	u := fmt.Sprintf("http://%s/vm/%s/call?method=%s&path=%s", addr, id, method, url.QueryEscape(path))
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Post(u, "application/octet-stream", strings.NewReader(body))
	if err != nil {
		return kvAnswer{}, fmt.Errorf("%s %s from %s: %w", method, path, id, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var a struct {
		kvAnswer
		Body string `json:"body"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &a) != nil {
		return kvAnswer{}, fmt.Errorf("%s %s from %s: the program answered %d %s", method, path, id, resp.StatusCode, raw)
	}
	a.kvAnswer.Body, _ = base64.StdEncoding.DecodeString(a.Body)
	return a.kvAnswer, nil
}

// wantAPI fails the test unless a has the status and (for an error) code.
func wantAPI(t *testing.T, what string, a kvAnswer, status int, code string) {
	t.Helper()
	if a.Status != status || (code != "" && a.code() != code) {
		t.Fatalf("%s: %s, want %d %s", what, a, status, code)
	}
}

// proxyProgram is the manifest of an on-demand or persistent program
// running apiProxyApp from code.
func proxyProgram(code string, persistent bool) string {
	return fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q},
		"resources": {"vcpus": 1, "memory": 256}, "on": {"http": true, "persistent": %v}}`, code, persistent)
}

// Programs store and read their keys through the guest API from inside
// their VMs: values as bytes, each program its own keys, properties of
// its own, TTL expiry, quotas and bad keys as documented; the example app
// counts its visits; one program's flood is rate limited while another
// program's calls and the agent's admin API answer.
func TestGuestAPIStoreFromVMs(t *testing.T) {
	requireRoot(t)
	requirePythonModules(t, "json", "fastapi")
	code := writeApp(t, map[string]string{"main.py": apiProxyApp})
	example, _ := filepath.Abs("../examples/guestapi")
	config := fmt.Sprintf(`{"idle_timeout": "5m", "programs": {"app": %s, "other": %s, "flood": %s,
		"visits": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, "on": {"http": true}}}}`,
		proxyProgram(code, false), proxyProgram(code, false), proxyProgram(code, false), example)
	agent := serveAgent(t, config, agentOptions{}, "--node-name", "gnode",
		"--kv-max-keys", "5", "--kv-max-value", "1024", "--guest-api-rate", "20", "--guest-api-burst", "40")
	call := func(id, method, path, body string) kvAnswer { return guestCall(t, agent.addr, id, method, path, body) }

	t.Run("store and read", func(t *testing.T) {
		wantAPI(t, "put", call("app", "PUT", "/v1/kv/greeting", "hello"), 200, "")
		if a := call("app", "GET", "/v1/kv/greeting", ""); a.Status != 200 || string(a.Body) != "hello" {
			t.Fatalf("get: %s", a)
		}
		binary := "\x00\x01\xfe\xff\r\n"
		wantAPI(t, "put bytes", call("app", "PUT", "/v1/kv/bytes", binary), 200, "")
		if a := call("app", "GET", "/v1/kv/bytes", ""); string(a.Body) != binary {
			t.Fatalf("bytes came back as %q, want %q", a.Body, binary)
		}
		a := call("app", "GET", "/v1/kv?prefix=gr", "")
		if a.Status != 200 || !strings.Contains(string(a.Body), `"key":"greeting"`) || strings.Contains(string(a.Body), "bytes") {
			t.Fatalf("listing under gr: %s", a)
		}
		var p struct {
			Program, Node string
			Persistent    bool
		}
		a = call("app", "GET", "/v1/properties", "")
		if json.Unmarshal(a.Body, &p) != nil || p.Program != "app" || p.Node != "gnode" || p.Persistent {
			t.Fatalf("properties: %s", a)
		}
		// The admin API reaches the same keys.
		out, err := exec.Command(mustAgent(t), "program", "--admin", agent.admin, "kv", "get", "app", "greeting").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "hello" {
			t.Fatalf("program kv get: %v %q", err, out)
		}
	})

	t.Run("another program cannot read them", func(t *testing.T) {
		wantAPI(t, "another program's get", call("other", "GET", "/v1/kv/greeting", ""), 404, "no_such_key")
		wantAPI(t, "another program's delete", call("other", "DELETE", "/v1/kv/greeting", ""), 404, "no_such_key")
		if a := call("other", "GET", "/v1/kv", ""); a.Status != 200 || !strings.Contains(string(a.Body), `"keys":[]`) {
			t.Fatalf("another program's listing: %s", a)
		}
		var p struct{ Program string }
		if a := call("other", "GET", "/v1/properties", ""); json.Unmarshal(a.Body, &p) != nil || p.Program != "other" {
			t.Fatalf("another program's properties: %s", a)
		}
		if a := call("app", "GET", "/v1/kv/greeting", ""); string(a.Body) != "hello" {
			t.Fatalf("the owner's value after the other's delete: %s", a)
		}
	})

	t.Run("TTL expiry", func(t *testing.T) {
		wantAPI(t, "put with a TTL", call("other", "PUT", "/v1/kv/session?ttl=1", "s"), 200, "")
		wantAPI(t, "get before expiry", call("other", "GET", "/v1/kv/session", ""), 200, "")
		time.Sleep(1500 * time.Millisecond)
		wantAPI(t, "get after expiry", call("other", "GET", "/v1/kv/session", ""), 404, "no_such_key")
		wantAPI(t, "a bad TTL", call("other", "PUT", "/v1/kv/session?ttl=soon", "s"), 400, "bad_request")
	})

	t.Run("bad keys and quota", func(t *testing.T) {
		for _, key := range []string{"a%2Fb", "caf%C3%A9", "a%20b", strings.Repeat("k", 257)} {
			wantAPI(t, "key "+key, call("other", "PUT", "/v1/kv/"+key, "v"), 400, "bad_key")
		}
		wantAPI(t, "a value over --kv-max-value", call("other", "PUT", "/v1/kv/big", strings.Repeat("v", 1025)), 413, "value_too_large")
		wantAPI(t, "a wrong method", call("other", "POST", "/v1/kv/k", "v"), 405, "method_not_allowed")
		for i := range 5 {
			wantAPI(t, "a key under the quota", call("other", "PUT", fmt.Sprintf("/v1/kv/k%d", i), "v"), 200, "")
		}
		wantAPI(t, "a key past --kv-max-keys", call("other", "PUT", "/v1/kv/k5", "v"), 403, "quota_exceeded")
		wantAPI(t, "another program under its own quota", call("app", "PUT", "/v1/kv/k5", "v"), 200, "")
	})

	t.Run("the example counts visits", func(t *testing.T) {
		for want := 1; want <= 2; want++ {
			status, body, err := (&clusterNode{proc: agent}).get("visits")
			if err != nil || status != 200 || !strings.Contains(body, fmt.Sprintf(`"visits":%d`, want)) {
				t.Fatalf("visit %d: %d %s %v", want, status, body, err)
			}
		}
	})

	t.Run("a flood is rate limited, alone", func(t *testing.T) {
		call("flood", "GET", "/v1/properties", "") // booted before the flood starts
		var flood struct {
			Counts  map[string]int
			Seconds float64
		}
		var floodErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			resp, err := (&http.Client{Timeout: 5 * time.Minute}).Get("http://" + agent.addr + "/vm/flood/flood?n=400&path=" + url.QueryEscape("/v1/properties"))
			if err != nil {
				floodErr = err
				return
			}
			defer resp.Body.Close()
			floodErr = json.NewDecoder(resp.Body).Decode(&flood)
		}()
		others, admins := 0, 0
		cli := admin.NewClient(agent.admin, "")
		for flooding := true; flooding; {
			select {
			case <-done:
				flooding = false
			default:
			}
			wantAPI(t, "another program during the flood", call("app", "GET", "/v1/kv/greeting", ""), 200, "")
			others++
			var st admin.Status
			if err := cli.Do("GET", "/v1/programs/app", nil, &st); err != nil {
				t.Fatalf("the admin API during the flood: %v", err)
			}
			admins++
			time.Sleep(100 * time.Millisecond)
		}
		if floodErr != nil {
			t.Fatalf("the flood: %v", floodErr)
		}
		counts := flood.Counts
		t.Logf("flood of 400 calls in %.1f s: %v; meanwhile %d calls of another program and %d of the admin API all answered",
			flood.Seconds, counts, others, admins)
		// At 20 calls a second after a burst of 40 (less the one before),
		// whatever the time the flood took.
		allowed := 40 + int(20*flood.Seconds) + 1
		if counts["200"]+counts["429"] != 400 || counts["200"] > allowed || counts["200"] < 39 {
			t.Fatalf("a flood of 400 calls at 20/s (burst 40) in %.1f s: %v, want 39 to %d answered, the others 429", flood.Seconds, counts, allowed)
		}
		a := call("flood", "GET", "/v1/properties", "")
		if a.Status == 429 && a.RetryAfter == "" {
			t.Fatalf("a 429 without Retry-After")
		}
	})
}

// A persistent program writes a key, its node is killed, and on the node
// it moved to it reads the value back and writes with its new token.
func TestGuestAPIValueFollowsAMovedPersistentProgram(t *testing.T) {
	code := writeApp(t, map[string]string{"main.py": apiProxyApp})
	c := newTestCluster(t, 3, fmt.Sprintf(`{"programs": {"worker": %s}}`, proxyProgram(code, true)))
	var on []string
	waitFor(t, time.Minute, func() bool { on = running(c.nodes, "worker"); return len(on) == 1 }, "the persistent program did not start")
	byName := map[string]*clusterNode{}
	for _, n := range c.nodes {
		byName[n.name] = n
	}
	owner := byName[on[0]]
	var a kvAnswer
	// Its lease may be a moment behind its VM: retry a 503 of the router.
	waitFor(t, 30*time.Second, func() bool {
		var err error
		a, err = guestDo(owner.proc.addr, "worker", "PUT", "/v1/kv/state", "written on "+owner.name)
		return err == nil
	}, "the owner does not serve the program")
	wantAPI(t, "the owner's write", a, 200, "")
	tokenOf := func(n *clusterNode) int64 {
		var p struct {
			FencingToken int64 `json:"fencing_token"`
		}
		json.Unmarshal(guestCall(t, n.proc.addr, "worker", "GET", "/v1/properties", "").Body, &p)
		return p.FencingToken
	}
	before := tokenOf(owner)

	syscall.Kill(owner.proc.cmd.Process.Pid, syscall.SIGKILL)
	var survivors []*clusterNode
	for _, n := range c.nodes {
		if n != owner {
			survivors = append(survivors, n)
		}
	}
	var next *clusterNode
	waitFor(t, 2*time.Minute, func() bool {
		on := running(survivors, "worker")
		if len(on) != 1 {
			return false
		}
		next = byName[on[0]]
		a, err := guestDo(next.proc.addr, "worker", "GET", "/v1/kv/state", "")
		return err == nil && a.Status != http.StatusServiceUnavailable
	}, "no other node runs the program after its node was killed")
	a = guestCall(t, next.proc.addr, "worker", "GET", "/v1/kv/state", "")
	if a.Status != 200 || string(a.Body) != "written on "+owner.name {
		t.Fatalf("on %s after the move: %s, want the value written on %s", next.name, a, owner.name)
	}
	wantAPI(t, "a write with the new token", guestCall(t, next.proc.addr, "worker", "PUT", "/v1/kv/state", "written on "+next.name), 200, "")
	if after := tokenOf(next); after <= before {
		t.Fatalf("the token on %s is %d, on %s it was %d: it must go up", next.name, after, owner.name, before)
	}
	t.Logf("moved from %s to %s: the value followed; token %d -> %d", owner.name, next.name, before, tokenOf(next))
}
