package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/guestlink"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// callerApp calls the guest API from inside the VM with Python's urllib:
// POST /call?path=P&method=M relays its body to $FERRY_API_URL + P and
// answers with what came back, as JSON.
const callerApp = `
import asyncio, concurrent.futures, json, os, urllib.error, urllib.parse, urllib.request

def call(method, path, body):
    req = urllib.request.Request(os.environ["FERRY_API_URL"] + path, data=body or None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    q = urllib.parse.parse_qs(scope["query_string"].decode())
    if scope["path"] == "/flood":
        # n calls at once from as many threads: how each was answered.
        n = int(q["n"][0])
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            results = await asyncio.get_running_loop().run_in_executor(
                None, lambda: list(pool.map(lambda i: call("GET", "/v1/properties", b"")[0], range(n))))
        out = json.dumps({"status": 200, "body": json.dumps(results)}).encode()
    elif scope["path"] == "/env":
        out = json.dumps({"url": os.environ.get("FERRY_API_URL", "")}).encode()
    else:
        status, data, headers = await asyncio.to_thread(call, q.get("method", ["GET"])[0], q["path"][0], body)
        out = json.dumps({"status": status, "body": data.decode("latin-1"), "headers": headers}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
`

// apiAnswer is what callerApp reports.
type apiAnswer struct {
	Status  int               `json:"status"`
	Body    string            `json:"body"`
	Headers map[string]string `json:"headers"`
	URL     string            `json:"url"`
}

// callAPI asks callerApp in inst to call the guest API.
func callAPI(t *testing.T, inst *lifecycle.Instance, method, path string, body []byte) apiAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	target := "/call?method=" + method + "&path=" + path
	switch {
	case path == "":
		target = "/env"
	case method == "FLOOD":
		target = "/flood?n=" + path
	}
	r, err := request(ctx, inst.Session, "POST", target, nil, body)
	if err != nil {
		t.Fatalf("calling the app: %v", err)
	}
	if r.status != 200 {
		t.Fatalf("the app answered %d: %s", r.status, r.body)
	}
	var a apiAnswer
	if err := json.Unmarshal(r.body, &a); err != nil {
		t.Fatalf("the app's answer %q: %v", r.body, err)
	}
	return a
}

// newAPIManager is a sandbox manager running callerApp, with api as the
// guest API hook.
func newAPIManager(t *testing.T, api func(*lifecycle.Instance) http.Handler) (*lifecycle.Manager, *lifecycle.Program) {
	t.Helper()
	m, _, p := newManager(t, lifecycle.Options{GuestAPI: api})
	p.ID = "caller"
	p.CodePath = writeApp(t, map[string]string{"main.py": callerApp})
	return m, p
}

// bootAPI starts p's VM, released when the test ends.
func bootAPI(t *testing.T, m *lifecycle.Manager, p *lifecycle.Program) *lifecycle.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inst.Release)
	return inst
}

// A program in a sandbox VM calls $FERRY_API_URL with urllib and gets
// the answer of the handler the agent installed for its boot: the
// handler knows which program calls, and bodies cross both ways.
func TestGuestAPIReachesTheHostHandler(t *testing.T) {
	m, p := newAPIManager(t, func(inst *lifecycle.Instance) http.Handler {
		id := inst.Program.ID
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				guestlink.Error(w, http.StatusBadRequest, "bad_body", err.Error())
				return
			}
			w.Header().Set("X-Program", id)
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, "%s %s %s?%s %d", id, r.Method, r.URL.Path, r.URL.RawQuery, len(body))
		})
	})
	inst := bootAPI(t, m, p)

	env := callAPI(t, inst, "", "", nil)
	if env.URL != contract.APIURL(contract.DefaultAPIAddress) {
		t.Errorf("FERRY_API_URL in the VM is %q, want %q", env.URL, contract.APIURL(contract.DefaultAPIAddress))
	}
	a := callAPI(t, inst, "PUT", "/v1/kv/a%3Fb%3Fx%3D1", []byte(strings.Repeat("v", 100000)))
	if a.Status != http.StatusCreated || a.Body != "caller PUT /v1/kv/a?b?x=1 100000" || a.Headers["X-Program"] != "caller" {
		t.Errorf("PUT through the guest API: %+v", a)
	}
	a = callAPI(t, inst, "GET", "/v1/properties", nil)
	if a.Status != http.StatusCreated || a.Body != "caller GET /v1/properties? 0" {
		t.Errorf("GET through the guest API: %+v", a)
	}
}

// Without a hook every call is answered 503 with a JSON error that says
// the host serves no guest API.
func TestGuestAPIWithoutHandlerIs503(t *testing.T) {
	m, p := newAPIManager(t, nil)
	inst := bootAPI(t, m, p)
	a := callAPI(t, inst, "GET", "/v1/properties", nil)
	if a.Status != http.StatusServiceUnavailable || !strings.Contains(a.Body, guestlink.NoAPI) {
		t.Errorf("a call without a host handler: %+v", a)
	}
}

// A program that floods the API (200 calls at once from threads): the
// agent's handler never runs more than contract.MaxAPIStreams calls of the
// VM at once, every call is answered (200, or 503 "busy" when init has
// too many in progress), and the VM and the API still answer afterwards.
func TestGuestAPIFloodIsBounded(t *testing.T) {
	var mu sync.Mutex
	running, peak := 0, 0
	m, p := newAPIManager(t, func(*lifecycle.Instance) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			running++
			peak = max(peak, running)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond) // hold the call, so that calls overlap
			mu.Lock()
			running--
			mu.Unlock()
			w.Write([]byte("{}"))
		})
	})
	inst := bootAPI(t, m, p)
	a := callAPI(t, inst, "FLOOD", "200", nil)
	var statuses []int
	if err := json.Unmarshal([]byte(a.Body), &statuses); err != nil || len(statuses) != 200 {
		t.Fatalf("the flood's results %q: %v", a.Body, err)
	}
	counts := map[int]int{}
	for _, st := range statuses {
		counts[st]++
	}
	if counts[200]+counts[503] != 200 || counts[200] == 0 {
		t.Errorf("statuses of the flood: %v, want only 200 and 503", counts)
	}
	mu.Lock()
	if peak > contract.MaxAPIStreams {
		t.Errorf("the agent served %d calls of one VM at once, more than %d", peak, contract.MaxAPIStreams)
	}
	t.Logf("flood of 200 calls: %v, at most %d at once on the host", counts, peak)
	mu.Unlock()
	if a := callAPI(t, inst, "GET", "/v1/properties", nil); a.Status != 200 {
		t.Errorf("a call after the flood: %+v", a)
	}
}
