package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// limitsHoldApp holds whatever it is given: a request until its whole
// body has arrived, a websocket until the client closes it.
const limitsHoldApp = `
async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                await send({"type": "websocket.send", "text": "echo: " + msg["text"]})
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"done"})
`

// limitsConfig serves the hold app as "held" and "other".
func limitsConfig(code string) string {
	return fmt.Sprintf(`{"idle_timeout": "10m", "programs": {
		"held":  {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q}, "resources": {"vcpus": 1}, "on": {"http": true}},
		"other": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q}, "resources": {"vcpus": 1}, "on": {"http": true}}}}`,
		code, code)
}

// limitsSlowClient is one hostile client on a raw connection.
type limitsSlowClient struct {
	conn   net.Conn
	status atomic.Int32 // the answer's status once read (101 for a held websocket)
}

// Must show 4 of issue 13: 1100 slow clients (550 idle websockets and 550
// uploads trickling a byte a second) hold one program of host-agent serve,
// with its default limits. A fresh request to another program answers at
// once, and a fresh request to the held program gets a 503 with
// Retry-After within a second.
func TestHostileLimitsSlowClientsGet503(t *testing.T) {
	requirePythonModules(t, "asyncio")
	code := writeApp(t, map[string]string{"main.py": limitsHoldApp})
	addr, _ := startServe(t, limitsConfig(code), "--admin", filepath.Join(t.TempDir(), "admin.sock"))
	url := "http://" + addr
	client := &http.Client{Timeout: time.Minute}
	for _, p := range []string{"held", "other"} { // both booted before the crowd
		resp, err := client.Get(url + "/vm/" + p + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}

	// 1100 client sockets here and as many in the agent fit the soft
	// limit of open files Go raises to the hard one.
	const websockets, uploads = 550, 550
	clients := make([]*limitsSlowClient, 0, websockets+uploads)
	t.Cleanup(func() {
		for _, c := range clients {
			c.conn.Close()
		}
	})
	var answered, refused atomic.Int64
	open := func(head string) {
		conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", len(clients), err)
		}
		c := &limitsSlowClient{conn: conn}
		clients = append(clients, c)
		if _, err := io.WriteString(conn, head); err != nil {
			t.Fatalf("client %d: %v", len(clients), err)
		}
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				return
			}
			c.status.Store(int32(resp.StatusCode))
			answered.Add(1)
			if resp.StatusCode == http.StatusServiceUnavailable {
				refused.Add(1)
			}
		}()
	}
	for range websockets {
		open("GET /vm/held/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	}
	for range uploads {
		open("POST /vm/held/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\nx")
	}
	trickle, stopTrickle := context.WithCancel(context.Background())
	defer stopTrickle()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-trickle.Done():
				return
			case <-tick.C:
			}
			for _, c := range clients[websockets:] {
				if c.status.Load() == 0 {
					c.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
					c.conn.Write([]byte("x"))
				}
			}
		}
	}()
	// Let the crowd settle: the program's slots fill up (and, with this
	// change, the rest of the crowd is turned away).
	deadline := time.Now().Add(30 * time.Second)
	for prev := int64(-1); time.Now().Before(deadline); {
		time.Sleep(2 * time.Second)
		n := answered.Load()
		if n == prev && refused.Load() > 0 {
			break
		}
		prev = n
	}
	held := 0
	for _, c := range clients {
		if s := c.status.Load(); s == 0 || s == http.StatusSwitchingProtocols {
			held++
		}
	}
	t.Logf("%d clients: %d turned away with 503, %d held by the program", len(clients), refused.Load(), held)

	// Another program answers at once.
	began := time.Now()
	quick := &http.Client{Timeout: 5 * time.Second}
	resp, err := quick.Get(url + "/vm/other/")
	if err != nil {
		t.Fatalf("another program, with the held one at its limit: %v", err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("another program answered %d", resp.StatusCode)
	}
	t.Logf("another program answered in %s", time.Since(began).Round(time.Millisecond))

	// The held program answers a fresh request with 503 and Retry-After,
	// within a second.
	began = time.Now()
	oneSecond := &http.Client{Timeout: time.Second}
	resp, err = oneSecond.Get(url + "/vm/held/")
	if err != nil {
		t.Fatalf("a fresh request to the held program: no answer within a second: %v", err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a fresh request to the held program: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	t.Logf("the held program answered 503 (Retry-After %s) in %s", resp.Header.Get("Retry-After"), time.Since(began).Round(time.Millisecond))
	if held == 0 || held >= len(clients) {
		t.Fatalf("%d of %d clients held", held, len(clients))
	}
}

// The listeners' timeouts, public and admin (TCP): an idle keep-alive
// connection is closed after --keepalive-timeout, a request head that does
// not arrive after --header-timeout, a stalled upload after --body-timeout
// (408 on the public listener). A websocket idle for longer than all of
// them lives on. The metrics listener of serve answers.
func TestHostileLimitsConnectionTimeouts(t *testing.T) {
	requirePythonModules(t, "asyncio")
	code := writeApp(t, map[string]string{"main.py": limitsHoldApp})
	adminAddr, metricsAddr := freePort(t), freePort(t)
	addr, _ := startServe(t, limitsConfig(code), "--admin", adminAddr, "--admin-token", "s3cret", "--metrics-listen", metricsAddr,
		"--keepalive-timeout", "1s", "--header-timeout", "1s", "--body-timeout", "1s")
	waitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", adminAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "admin API did not listen")

	closedWithin := func(c net.Conn, what string) string {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("%s: not closed within 10 s (%v); read %q", what, err, got)
		}
		return string(got)
	}
	dial := func(a string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, l := range []struct{ name, addr, path, auth, upload string }{
		{"public", addr, "/vm/other/", "", "PUT /vm/held/"},
		{"admin", adminAddr, "/v1/programs", "Authorization: Bearer s3cret\r\n", "PUT /v1/programs/late"}, // a deploy reads its body
	} {
		idle := dial(l.addr)
		fmt.Fprintf(idle, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", l.path, l.auth)
		br := bufio.NewReader(idle)
		idle.SetReadDeadline(time.Now().Add(time.Minute))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("%s: keep-alive request: %v %+v", l.name, err, resp)
		}
		io.ReadAll(resp.Body)
		closedWithin(idle, l.name+": idle keep-alive connection")

		slowHead := dial(l.addr)
		fmt.Fprintf(slowHead, "GET %s HTTP/1.1\r\nHost: x\r\n", l.path) // the head never ends
		closedWithin(slowHead, l.name+": slow request head")

		stalled := dial(l.addr)
		fmt.Fprintf(stalled, "%s HTTP/1.1\r\nHost: x\r\n%sContent-Length: 100\r\n\r\n{\"code\":", l.upload, l.auth) // the rest never comes
		got := closedWithin(stalled, l.name+": stalled upload")
		if l.name == "public" && !strings.HasPrefix(got, "HTTP/1.1 408 ") {
			t.Errorf("public: stalled upload answered %q", got)
		}
	}

	// A websocket idle for longer than every timeout above still works.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/vm/held/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	time.Sleep(2500 * time.Millisecond)
	if err := ws.Write(ctx, websocket.MessageText, []byte("still there?")); err != nil {
		t.Fatalf("idle websocket: %v", err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "echo: still there?" {
		t.Fatalf("idle websocket: %q %v", msg, err)
	}
	ws.Close(websocket.StatusNormalClosure, "")

	if m := curl(t, "http://"+metricsAddr+"/metrics"); !strings.Contains(m, "ferry_running_vms") {
		t.Fatalf("metrics listener of serve: %q", m)
	}
}

// The admin token counts only as "Authorization: Bearer TOKEN"; /metrics
// (which names every program) is not on the public listener but on the
// admin API; the public /healthz says ok and names nothing.
func TestHostileLimitsAdminBearerAndMetricsPlacement(t *testing.T) {
	requirePythonModules(t, "asyncio")
	code := writeApp(t, map[string]string{"main.py": limitsHoldApp})
	adminAddr := freePort(t)
	addr, _ := startServe(t, limitsConfig(code), "--admin", adminAddr, "--admin-token", "s3cret")
	waitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", adminAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "admin API did not listen")
	get := func(url, auth string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	admin := "http://" + adminAddr
	for _, auth := range []string{"s3cret", "bearer s3cret", "Bearer  s3cret", "Basic s3cret", ""} {
		if status, body := get(admin+"/v1/programs", auth); status != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d %s", auth, status, body)
		}
	}
	if status, body := get(admin+"/v1/programs", "Bearer s3cret"); status != 200 || !strings.Contains(body, `"held"`) {
		t.Fatalf("Bearer token: %d %s", status, body)
	}

	get("http://"+addr+"/vm/held/", "") // a request, so that /metrics names the program
	if status, body := get("http://"+addr+"/metrics", ""); status != http.StatusNotFound || strings.Contains(body, "held") {
		t.Errorf("public /metrics: %d %.200s", status, body)
	}
	if status, body := get("http://"+addr+"/healthz", ""); status != 200 || body != "ok\n" {
		t.Errorf("public /healthz: %d %q", status, body)
	}
	if status, body := get(admin+"/metrics", "Bearer s3cret"); status != 200 || !strings.Contains(body, `ferry_requests_total{program="held",status="200"} 1`) {
		t.Errorf("admin /metrics: %d %.300s", status, body)
	}
	if status, _ := get(admin+"/metrics", ""); status != http.StatusUnauthorized {
		t.Errorf("admin /metrics without the token: %d", status)
	}
}
