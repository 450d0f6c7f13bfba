package tests

// Ferry's init under the reference runtime's supervisor (issue 19,
// docs/aleph-compat.md): init started by hand with -transport unix:PATH
// and -host-uds, behind a Go stand-in for Firecracker's vsock device, and
// a host side doing what aleph-vm's supervisor does, written from its
// source (src/aleph/vm/hypervisors/firecracker/microvm.py wait_for_init
// and shutdown, src/aleph/vm/controllers/firecracker/program.py
// _setup_configuration and run_code, src/aleph/vm/orchestrator/run.py
// run_code_on_request).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ferry-vm/ferry/internal/syncbuf"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// alephApp is the program: FastAPI on Debian's Python.
const alephApp = `import os, socket, asyncio, subprocess
from fastapi import FastAPI, Request, Response

app = FastAPI()

@app.get("/")
def root():
    return {"hello": "aleph"}

@app.get("/env")
def env():
    return {"greeting": os.environ.get("GREETING"), "address": os.environ.get("ALEPH_ADDRESS_TO_USE"),
            "hostname": socket.gethostname(), "api_socket": os.environ.get("ALEPH_API_UNIX_SOCKET"),
            "version": os.environ.get("ALEPH_INIT_VERSION"), "pid1": open("/proc/1/cmdline").read().split("\0")[0],
            "code": os.path.dirname(os.path.abspath(__file__))}

@app.get("/persist")
def persist():
    with open(os.path.join(os.environ["TEST_VOLUME"], "written-by-app"), "w") as f:
        f.write("persisted\n")
    return {"persisted": True}

@app.get("/daemon")
def daemon():
    # A process of its own session, out of the app's process group, with a
    # file open on the volume.
    log = open(os.path.join(os.environ["TEST_VOLUME"], "daemon.log"), "w")
    subprocess.Popen(["sleep", "1000"], stdout=log, start_new_session=True)
    return {"started": True}

@app.get("/read-only")
def read_only():
    with open(os.environ["TEST_READ_ONLY"]) as f:
        return {"content": f.read()}

@app.get("/query")
async def query(request: Request):
    return {"query": request.url.query, "a": request.query_params.getlist("a")}

@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return Response(content=body, media_type="application/octet-stream", headers={"x-length": str(len(body))})

@app.get("/cookies")
def cookies():
    r = Response("two cookies")
    r.set_cookie("first", "1")
    r.set_cookie("second", "2")
    return r

@app.get("/print")
def printed():
    print("printed-by-the-app", flush=True)
    return {"printed": True}

@app.get("/raise")
def boom():
    raise RuntimeError("boom from the app")

@app.get("/slow")
async def slow():
    await asyncio.sleep(0.5)
    return {"slow": True}

@app.get("/api")
def api():
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["ALEPH_API_UNIX_SOCKET"])
    s.sendall(b"GET /properties HTTP/1.0\r\nHost: localhost\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return Response(content=data.split(b"\r\n\r\n", 1)[1], media_type="application/json")
`

// vmHash is the program's item hash, and alephHostname the host name the
// reference derives from it (base32, lower case, no padding).
const vmHash = "4a3b1c6d2e8f0a9b7c5d3e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b"

func alephHostname(t *testing.T) string {
	b, err := hex.DecodeString(vmHash)
	if err != nil {
		t.Fatal(err)
	}
	return strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(b), "="))
}

// firecrackerVsock stands for Firecracker's vsock device on the host: a
// connection to uds is a request to reach a guest port (CONNECT PORT\n,
// answered OK HOSTPORT\n), here init's listener at guest.
func firecrackerVsock(t *testing.T, uds, guest string) {
	l, err := net.Listen("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil || line != "CONNECT 52\n" {
					return
				}
				g, err := net.Dial("unix", guest)
				if err != nil {
					return // Firecracker closes the connection
				}
				defer g.Close()
				c.Write([]byte("OK 1073741824\n"))
				done := make(chan struct{})
				go func() {
					io.Copy(g, br)
					g.(*net.UnixConn).CloseWrite()
					close(done)
				}()
				io.Copy(c, g)
				c.(*net.UnixConn).CloseWrite()
				<-done
			}()
		}
	}()
}

// supervisor is the host side: the vsock device's uds_path.
type supervisor struct {
	uds string
}

// waitForInit is MicroVM.wait_for_init: the ready signal on uds_52, its
// version (empty: 1.0.0).
func (s supervisor) waitForInit(t *testing.T, l net.Listener) string {
	t.Helper()
	type res struct {
		data []byte
		err  error
	}
	got := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- res{nil, err}
			return
		}
		defer c.Close()
		b, err := io.ReadAll(io.LimitReader(c, 1_000_000))
		got <- res{b, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if len(r.data) == 0 {
			return "1.0.0"
		}
		var doc map[string]any
		if err := msgpack.Unmarshal(r.data, &doc); err != nil {
			t.Fatalf("ready signal %x: %v", r.data, err)
		}
		return doc["version"].(string)
	case <-time.After(60 * time.Second):
		t.Fatal("never received the signal from init")
	}
	return ""
}

// dial connects to the guest's port 52 through the vsock device and sends
// payload after CONNECT, returning the connection and the ack line.
func (s supervisor) dial(t *testing.T, payload []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", s.uds)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.Write(append([]byte("CONNECT 52\n"), payload...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if ack, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(ack, "OK ") {
		t.Fatalf("ack %q %v", ack, err)
	}
	return c, br
}

// configure is AlephFirecrackerProgram._setup_configuration: the length
// line and the document; the reply {success, error, traceback}.
func (s supervisor) configure(t *testing.T, doc map[string]any) map[string]any {
	t.Helper()
	payload, err := msgpack.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	c, br := s.dial(t, append([]byte(fmt.Sprintf("%d\n", len(payload))), payload...))
	defer c.Close()
	raw, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	var reply map[string]any
	if err := msgpack.Unmarshal(raw, &reply); err != nil {
		t.Fatalf("configuration reply %q: %v", raw, err)
	}
	return reply
}

// alephResponse is an HTTP response as run_code_on_request makes it.
type alephResponse struct {
	status     int
	header     http.Header
	rawHeaders [][2]string // as the VM sent them
	body       []byte
	result     map[string]any
}

// runCode is AlephFirecrackerProgram.run_code then run_code_on_request:
// the scope out, the result document back, turned into an HTTP response.
func (s supervisor) runCode(t *testing.T, method, path, query string, headers [][2]string, body []byte) alephResponse {
	t.Helper()
	hs := make([][][]byte, 0, len(headers))
	for _, h := range headers {
		hs = append(hs, [][]byte{[]byte(strings.ToLower(h[0])), []byte(h[1])})
	}
	if body == nil {
		body = []byte{}
	}
	payload, err := msgpack.Marshal(map[string]any{"scope": map[string]any{
		"type": "http", "path": path, "method": method, "query_string": query, "headers": hs, "body": body,
	}})
	if err != nil {
		t.Fatal(err)
	}
	c, br := s.dial(t, payload)
	defer c.Close()
	raw, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("reading the result: %v", err)
	}
	if len(raw) == 0 {
		return alephResponse{status: http.StatusBadGateway} // "No response from VM"
	}
	var result map[string]any
	if err := msgpack.Unmarshal(raw, &result); err != nil {
		t.Fatalf("result %q: %v", raw[:min(len(raw), 200)], err)
	}
	r := alephResponse{result: result, header: http.Header{}}
	if tb, ok := result["traceback"]; ok {
		r.status = http.StatusInternalServerError
		r.body = []byte(tb.(string))
		return r
	}
	head := result["headers"].(map[string]any)
	for _, kv := range head["headers"].([]any) {
		pair := kv.([]any)
		name, value := string(pair[0].([]byte)), string(pair[1].([]byte))
		r.rawHeaders = append(r.rawHeaders, [2]string{name, value})
		r.header.Add(name, value)
	}
	r.status = int(toInt(head["status"]))
	r.body = result["body"].(map[string]any)["body"].([]byte)
	return r
}

func toInt(v any) int64 {
	switch n := v.(type) {
	case int8:
		return int64(n)
	case int16:
		return int64(n)
	case int32:
		return int64(n)
	case int64:
		return n
	case uint8:
		return int64(n)
	case uint16:
		return int64(n)
	case uint32:
		return int64(n)
	case uint64:
		return int64(n)
	}
	return -1
}

// shutdown is MicroVM.shutdown: halt, then the ack, a line and STOPZ.
func (s supervisor) shutdown(t *testing.T) (msg, msg2 string) {
	t.Helper()
	c, br := s.dial(t, []byte("halt"))
	defer c.Close()
	msg, _ = br.ReadString('\n')
	msg2, _ = br.ReadString('\n')
	return msg, msg2
}

// alephGuest is init started by hand behind the stand-in.
type alephGuest struct {
	sup    supervisor
	guest  string // init's listener
	cmd    *exec.Cmd
	out    *syncbuf.Buffer
	done   chan struct{}
	err    error
	readyL net.Listener
}

func startAlephGuest(t *testing.T, extra ...string) *alephGuest {
	t.Helper()
	requirePythonModules(t, "fastapi")
	bin, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ferry-aleph-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	g := &alephGuest{sup: supervisor{uds: filepath.Join(dir, "v.sock")}, guest: filepath.Join(dir, "guest.sock"), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	// The supervisor listens for the ready signal before the VM starts.
	g.readyL, err = net.Listen("unix", g.sup.uds+"_52")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.readyL.Close() })
	firecrackerVsock(t, g.sup.uds, g.guest)
	args := append([]string{"-transport", "unix:" + g.guest, "-host-uds", g.sup.uds, "-debug"}, extra...)
	g.cmd = exec.Command(bin, args...)
	g.cmd.Stdout, g.cmd.Stderr = g.out, g.out
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		g.err = g.cmd.Wait()
		close(g.done)
	}()
	t.Cleanup(func() {
		select {
		case <-g.done:
		default:
			syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL)
			<-g.done
		}
		if t.Failed() || os.Getenv("FERRY_TEST_INIT_LOG") != "" {
			t.Logf("init output:\n%s", g.out.String())
		}
	})
	return g
}

// configDoc is a configuration as the supervisor builds it for the
// runtime version: ProgramConfiguration.to_runtime_format.
func configDoc(version, encoding string, code []byte, entrypoint string, extra map[string]any) map[string]any {
	doc := map[string]any{
		"input_data": nil, "interface": "asgi", "vm_hash": vmHash, "encoding": encoding,
		"entrypoint": entrypoint, "code": code, "ip": nil, "route": nil,
		"dns_servers": []string{"9.9.9.9"}, "volumes": []any{}, "variables": map[string]string{"GREETING": "hello " + version},
	}
	if version != "1.0.0" {
		doc["ipv6"], doc["ipv6_gateway"], doc["authorized_keys"] = nil, nil, nil
	}
	for k, v := range extra {
		doc[k] = v
	}
	return doc
}

func TestAlephSupervisorDrivesInit(t *testing.T) {
	g := startAlephGuest(t)
	version := g.sup.waitForInit(t, g.readyL)
	if version != "2.0.0" {
		t.Fatalf("ready signal announces version %q, want 2.0.0", version)
	}

	// The guest API: the supervisor serves it on uds_53.
	apiCalls := make(chan string, 4)
	apiL, err := net.Listen("unix", g.sup.uds+"_53")
	if err != nil {
		t.Fatal(err)
	}
	defer apiL.Close()
	go http.Serve(apiL, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apiCalls <- r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"from":"the supervisor"}`))
	}))

	reply := g.sup.configure(t, configDoc("2.0.0", "zip", zipArchive(t, map[string]string{"main.py": alephApp}), "main:app", nil))
	if reply["success"] != true {
		t.Fatalf("configuration failed: %v", reply)
	}

	t.Run("env and hostname", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/env", "", nil, nil)
		var seen map[string]string
		if err := json.Unmarshal(r.body, &seen); err != nil || r.status != 200 {
			t.Fatalf("%d %s %v", r.status, r.body, err)
		}
		if seen["greeting"] != "hello 2.0.0" || seen["address"] != alephHostname(t) || seen["version"] != "2.0.0" || seen["api_socket"] == "" {
			t.Fatalf("the app sees %v", seen)
		}
	})
	t.Run("GET", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/", "", [][2]string{{"Host", "example.org"}}, nil)
		if r.status != 200 || string(r.body) != `{"hello":"aleph"}` || r.header.Get("content-type") != "application/json" {
			t.Fatalf("%d %v %q", r.status, r.header, r.body)
		}
		if r.result["output"] != "" || len(r.result["output_data"].([]byte)) != 0 {
			t.Fatalf("output fields %q %q", r.result["output"], r.result["output_data"])
		}
	})
	t.Run("query string", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/query", "a=1&a=2&b=%20x", nil, nil)
		if r.status != 200 || string(r.body) != `{"query":"a=1&a=2&b=%20x","a":["1","2"]}` {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	for _, size := range []int{0, 200 << 10, 5 << 20} {
		t.Run(fmt.Sprintf("POST %d bytes", size), func(t *testing.T) {
			body := make([]byte, size)
			for i := range body {
				body[i] = byte(i*7 + i>>11)
			}
			r := g.sup.runCode(t, "POST", "/echo", "", [][2]string{{"Content-Type", "application/octet-stream"}, {"Content-Length", fmt.Sprint(size)}}, body)
			if r.status != 200 || r.header.Get("x-length") != fmt.Sprint(size) || sha256.Sum256(r.body) != sha256.Sum256(body) {
				t.Fatalf("%d x-length %q, %d bytes back", r.status, r.header.Get("x-length"), len(r.body))
			}
		})
	}
	t.Run("duplicate headers", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/cookies", "", nil, nil)
		var cookies []string
		for _, h := range r.rawHeaders {
			if h[0] == "set-cookie" {
				cookies = append(cookies, h[1])
			}
		}
		if r.status != 200 || len(cookies) != 2 || !strings.HasPrefix(cookies[0], "first=1") || !strings.HasPrefix(cookies[1], "second=2") {
			t.Fatalf("%d %v", r.status, r.rawHeaders)
		}
	})
	t.Run("404", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/nowhere", "", nil, nil)
		if r.status != 404 || string(r.body) != `{"detail":"Not Found"}` {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("stdout", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/print", "", nil, nil)
		if r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(g.out.String(), "stdout: printed-by-the-app") {
			if time.Now().After(deadline) {
				t.Fatal("the app's print never reached init's console")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("app raises", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/raise", "", nil, nil)
		if r.status != 500 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("guest API bridge", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/api", "", nil, nil)
		if r.status != 200 || string(r.body) != `{"from":"the supervisor"}` {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if p := <-apiCalls; p != "/properties" {
			t.Fatalf("the supervisor's API saw %q", p)
		}
	})
	t.Run("20 concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		statuses := make([]int, 20)
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[i] = g.sup.runCode(t, "GET", "/slow", "", nil, nil).status
			}()
		}
		wg.Wait()
		for i, s := range statuses {
			if s != 200 {
				t.Fatalf("request %d: %d", i, s)
			}
		}
	})
	t.Run("shell refused", func(t *testing.T) {
		c, br := g.sup.dial(t, []byte("!echo should-not-run"))
		defer c.Close()
		out, _ := io.ReadAll(br)
		if !strings.Contains(string(out), "disabled") || strings.Contains(string(out), "should-not-run\n") {
			t.Fatalf("shell answer %q", out)
		}
	})
	t.Run("Ferry on the same listener", func(t *testing.T) {
		c, err := net.Dial("unix", g.guest)
		if err != nil {
			t.Fatal(err)
		}
		sess := mux.Client(c, mux.Config{})
		defer sess.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := sess.Open(ctx, &message.RequestHead{Kind: message.KindHTTP, HTTPVersion: []byte("1.1"), Method: []byte("GET"), Scheme: []byte("http"), Path: []byte("/"), RawPath: []byte("/")}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		var h message.ResponseHead
		if err := st.ReadResponse(ctx, &h); err != nil || h.Status != 200 {
			t.Fatalf("%d %v", h.Status, err)
		}
		if b, _ := io.ReadAll(st); string(b) != `{"hello":"aleph"}` {
			t.Fatalf("%q", b)
		}
	})

	msg, msg2 := g.sup.shutdown(t)
	if msg != "STOP\n" || msg2 != "STOPZ\n" {
		t.Fatalf("halt answered %q %q", msg, msg2)
	}
	select {
	case <-g.done:
		if g.err != nil {
			t.Fatalf("init exited with %v", g.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("init did not exit after halt")
	}
}

func TestAlephConfigurationVersion1(t *testing.T) {
	g := startAlephGuest(t)
	g.sup.waitForInit(t, g.readyL)
	// Version 1: no ipv6, ipv6_gateway nor authorized_keys; the code as
	// one plain file inside the document.
	reply := g.sup.configure(t, configDoc("1.0.0", "plain", []byte(alephApp), "main:app", nil))
	if reply["success"] != true {
		t.Fatalf("configuration failed: %v", reply)
	}
	r := g.sup.runCode(t, "GET", "/env", "", nil, nil)
	var seen map[string]string
	if err := json.Unmarshal(r.body, &seen); err != nil || seen["greeting"] != "hello 1.0.0" || seen["address"] != alephHostname(t) {
		t.Fatalf("%d %s %v", r.status, r.body, err)
	}
	if msg, msg2 := g.sup.shutdown(t); msg2 != "STOPZ\n" {
		t.Fatalf("halt answered %q %q", msg, msg2)
	}
	<-g.done
}

func TestAlephBadEntrypoint(t *testing.T) {
	g := startAlephGuest(t)
	g.sup.waitForInit(t, g.readyL)
	reply := g.sup.configure(t, configDoc("2.0.0", "zip", zipArchive(t, map[string]string{"main.py": alephApp}), "main:nothing_here", nil))
	if reply["success"] != false {
		t.Fatalf("configuration of a bad entrypoint: %v", reply)
	}
	if tb, _ := reply["traceback"].(string); !strings.Contains(tb, "nothing_here") {
		t.Fatalf("no traceback naming the entrypoint: %v", reply)
	}
	if e, _ := reply["error"].(string); e == "" {
		t.Fatalf("no error: %v", reply)
	}
	// init is still there: the halt is answered.
	if _, msg2 := g.sup.shutdown(t); msg2 != "STOPZ\n" {
		t.Fatalf("halt after a failed configuration: %q", msg2)
	}
	<-g.done
}

// TestAlephRootfsLayout checks the image `make rootfs-aleph` builds by
// listing it: Ferry's init at /sbin/init and the reference's directories.
func TestAlephRootfsLayout(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"debootstrap", "mksquashfs", "unsquashfs", "depmod", "cpio"} {
		requireTool(t, tool)
	}
	if out, err := exec.Command("make", "-C", "..", "rootfs-aleph").CombinedOutput(); err != nil {
		t.Fatalf("make rootfs-aleph: %v\n%s", err, out)
	}
	image := "../build/rootfs/rootfs-aleph.squashfs"
	out, err := exec.Command("unsquashfs", "-lls", image).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	entries := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		for i, f := range fields {
			if name, ok := strings.CutPrefix(f, "squashfs-root"); ok && name != "" {
				entries[name] = fields[0]
				if i+2 < len(fields) && fields[i+1] == "->" {
					entries[name] += " -> " + fields[i+2]
				}
			}
		}
	}
	if entries["/sbin"] != "lrwxrwxrwx -> usr/sbin" || !strings.HasPrefix(entries["/usr/sbin/init"], "-rwx") {
		t.Fatalf("/sbin %q, /usr/sbin/init %q", entries["/sbin"], entries["/usr/sbin/init"])
	}
	for _, dir := range []string{"/overlay", "/mnt", "/mnt/rom", "/opt/code", "/opt/packages", "/opt/aleph/libs", "/data", "/etc/ferry", "/proc", "/sys", "/dev", "/run", "/tmp", "/root"} {
		if !strings.HasPrefix(entries[dir], "d") {
			t.Errorf("%s is %q in the image, want a directory", dir, entries[dir])
		}
	}
	for _, absent := range []string{"/root/init1.py", "/etc/ferry/aleph-shell"} {
		if _, ok := entries[absent]; ok {
			t.Errorf("%s is in the image", absent)
		}
	}
	// /sbin/init is the init just built.
	init, err := exec.Command("unsquashfs", "-cat", image, "usr/sbin/init").Output()
	if err != nil {
		t.Fatalf("unsquashfs -cat: %v", err)
	}
	built, err := os.ReadFile("../bin/init")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(init, built) {
		t.Fatalf("/sbin/init in the image (%d bytes) is not bin/init (%d bytes)", len(init), len(built))
	}
}
