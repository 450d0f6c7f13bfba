package tests

import (
	"archive/zip"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// objectStore is the test's store: objects served over HTTP on 127.0.0.1
// at /objects/<hex>, with the GETs counted.
type objectStore struct {
	mu      sync.Mutex
	objects map[string][]byte
	gets    map[string]int
	url     string
}

func newObjectStore(t *testing.T) *objectStore {
	t.Helper()
	s := &objectStore{objects: map[string][]byte{}, gets: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ref := strings.TrimPrefix(r.URL.Path, "/objects/")
		s.mu.Lock()
		b, ok := s.objects[ref]
		s.gets[ref]++
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.url = "http://" + ln.Addr().String() + "/objects"
	return s
}

// add stores b under its digest and returns the digest.
func (s *objectStore) add(b []byte) string {
	sum := sha256.Sum256(b)
	ref := hex.EncodeToString(sum[:])
	s.mu.Lock()
	s.objects[ref] = b
	s.mu.Unlock()
	return ref
}

func (s *objectStore) getCount(ref string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[ref]
}

// zipArchive packs files (name: content) into a zip archive.
func zipArchive(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, content := range files {
		h := &zip.FileHeader{Name: name, Method: zip.Deflate}
		h.SetMode(0o644)
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(content))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// squashfsOf packs files into a squashfs image.
func squashfsOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	requireTool(t, "mksquashfs")
	dir := writeApp(t, files)
	image := filepath.Join(t.TempDir(), "img.squashfs")
	if out, err := exec.Command("mksquashfs", dir, image, "-all-root", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v %s", err, out)
	}
	b, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dataApp answers with where it runs from and what /data holds.
const dataApp = `
import os, json
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    data = {}
    if os.path.isdir("/data"):
        for name in sorted(os.listdir("/data")):
            with open(os.path.join("/data", name), "rb") as f:
                data[name] = len(f.read()) if name.startswith("big") else open(os.path.join("/data", name)).read()
    body = json.dumps({"app": os.path.basename(__file__), "dir": os.path.dirname(__file__), "data": data}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
`

// binaryApp is an executable (interface binary) serving $PORT.
const binaryApp = `#!/usr/bin/python3
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("binary says " + open("/data/hello.txt").read()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
`

// Programs deployed by ref from a store the test serves on 127.0.0.1: a
// zip and a squashfs program, a plain single file, a binary, data at
// /data; a second program with the same ref fetches nothing again; a
// wrong digest is refused and nothing cached; the cache stays under its
// bound.
func TestStoreProgramsByRef(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sandbox mounts images through loop devices")
	}
	requirePythonModules(t, "asyncio")
	requireTool(t, "curl")
	st := newObjectStore(t)
	zipRef := st.add(zipArchive(t, map[string]string{"main.py": dataApp, "pkg/__init__.py": ""}))
	sqRef := st.add(squashfsOf(t, map[string]string{"main.py": dataApp}))
	plainRef := st.add([]byte(dataApp))
	binRef := st.add([]byte(binaryApp))
	dataRef := st.add(zipArchive(t, map[string]string{"hello.txt": "hello from the data"}))
	sqDataRef := st.add(squashfsOf(t, map[string]string{"hello.txt": "squashed data"}))
	// Two objects of 600 KiB that do not compress, for a cache of 1 MiB.
	big := func() string {
		b := make([]byte, 600<<10)
		rand.Read(b)
		return st.add(zipArchive(t, map[string]string{"big.bin": string(b)}))
	}
	big1, big2 := big(), big()
	wrong := strings.Repeat("0", 64)
	st.mu.Lock()
	st.objects[wrong] = []byte("not what the digest says")
	st.mu.Unlock()

	prog := func(code string, extra string) string {
		return fmt.Sprintf(`{"code": %s, "on": {"http": true}, "resources": {"vcpus": 1}%s}`, code, extra)
	}
	data := func(enc, ref string) string {
		return fmt.Sprintf(`, "data": {"encoding": %q, "mount": "/data", "ref": %q, "use_latest": false}`, enc, ref)
	}
	config := fmt.Sprintf(`{"idle_timeout": "10m", "programs": {
		"zipped":   %s,
		"again":    %s,
		"squashed": %s,
		"plain":    %s,
		"binary":   %s,
		"big-one":  %s,
		"big-two":  %s,
		"bad":      %s}}`,
		prog(fmt.Sprintf(`{"encoding": "zip", "entrypoint": "main:app", "ref": %q, "use_latest": false}`, zipRef), data("zip", dataRef)),
		prog(fmt.Sprintf(`{"encoding": "zip", "entrypoint": "main:app", "ref": "sha256:%s"}`, zipRef), ""),
		prog(fmt.Sprintf(`{"encoding": "squashfs", "entrypoint": "main:app", "interface": "asgi", "ref": %q}`, sqRef), data("squashfs", sqDataRef)),
		prog(fmt.Sprintf(`{"encoding": "plain", "entrypoint": "main:app", "ref": %q}`, plainRef), ""),
		prog(fmt.Sprintf(`{"encoding": "plain", "entrypoint": "server", "interface": "binary", "ref": %q}`, binRef), data("zip", dataRef)),
		prog(fmt.Sprintf(`{"encoding": "plain", "entrypoint": "main:app", "ref": %q}`, plainRef), data("zip", big1)),
		prog(fmt.Sprintf(`{"encoding": "plain", "entrypoint": "main:app", "ref": %q}`, plainRef), data("zip", big2)),
		prog(fmt.Sprintf(`{"encoding": "zip", "entrypoint": "main:app", "ref": %q}`, wrong), ""),
	)
	stateDir := filepath.Join(t.TempDir(), "state")
	agent := serveAgent(t, config, agentOptions{}, "--store", "file://"+t.TempDir(), "--store", st.url, "--store-cache-mib", "1", "--state-dir", stateDir)
	url := "http://" + agent.addr
	metrics := func(series string) float64 {
		return metricValue(t, curl(t, "--unix-socket", agent.admin, "http://admin/metrics"), series)
	}
	getJSON := func(path string) map[string]any {
		t.Helper()
		out := curl(t, "-w", "\n%{http_code}", url+path)
		i := strings.LastIndexByte(out, '\n')
		var doc map[string]any
		if out[i+1:] != "200" || json.Unmarshal([]byte(out[:i]), &doc) != nil {
			t.Fatalf("%s answered %s", path, out)
		}
		return doc
	}

	// zip: extracted code, zip data at /data.
	doc := getJSON("/vm/zipped/")
	if doc["app"] != "main.py" || doc["dir"] != "/opt/code" || doc["data"].(map[string]any)["hello.txt"] != "hello from the data" {
		t.Fatalf("zipped: %v", doc)
	}
	downloaded := metrics("ferry_store_downloaded_bytes_total")
	hits := metrics("ferry_store_hits_total")
	// The same ref again: booted without a second download.
	if doc := getJSON("/vm/again/"); doc["app"] != "main.py" {
		t.Fatalf("again: %v", doc)
	}
	if got := metrics("ferry_store_downloaded_bytes_total"); got != downloaded {
		t.Fatalf("the second program with the same ref downloaded %v more bytes", got-downloaded)
	}
	if metrics("ferry_store_hits_total") != hits+1 || st.getCount(zipRef) != 1 {
		t.Fatalf("hits %v then %v; the store served the zip %d times", hits, metrics("ferry_store_hits_total"), st.getCount(zipRef))
	}
	// squashfs code and squashfs data; a plain single file; a binary.
	if doc := getJSON("/vm/squashed/"); doc["app"] != "main.py" || doc["data"].(map[string]any)["hello.txt"] != "squashed data" {
		t.Fatalf("squashed: %v", doc)
	}
	if doc := getJSON("/vm/plain/"); doc["app"] != "main.py" || doc["dir"] != "/opt/code" {
		t.Fatalf("plain: %v", doc)
	}
	if got := curl(t, url+"/vm/binary/"); got != "binary says hello from the data" {
		t.Fatalf("binary: %q", got)
	}

	// A wrong digest: a clear error, nothing cached.
	out := curl(t, "-w", "\n%{http_code}", url+"/vm/bad/")
	if !strings.HasSuffix(out, "\n502") && !strings.HasSuffix(out, "\n503") {
		t.Fatalf("a program with a wrong digest answered %q", out)
	}
	got := sha256.Sum256([]byte("not what the digest says"))
	if !strings.Contains(agent.out.String(), "expected sha256 "+wrong+", got "+hex.EncodeToString(got[:])) {
		t.Fatalf("the agent's log does not name both digests:\n%s", agent.out.String())
	}
	objects := filepath.Join(stateDir, "store", "objects")
	if _, err := os.Stat(filepath.Join(objects, wrong)); !os.IsNotExist(err) {
		t.Fatalf("the refused object is in the cache: %v", err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(stateDir, "store", "tmp")); len(tmp) != 0 {
		t.Fatalf("a refused download left %d files", len(tmp))
	}

	// The cache's bound: 1 MiB, two objects of 600 KiB each. The first is
	// evicted once its program stops and the second is fetched.
	if doc := getJSON("/vm/big-one/"); doc["data"].(map[string]any)["big.bin"] != float64(600<<10) {
		t.Fatalf("big-one: %v", doc)
	}
	bin, _ := buildAgent()
	if out, err := exec.Command(bin, "program", "--admin", agent.admin, "stop", "big-one").CombinedOutput(); err != nil {
		t.Fatalf("program stop: %v %s", err, out)
	}
	if doc := getJSON("/vm/big-two/"); doc["data"].(map[string]any)["big.bin"] != float64(600<<10) {
		t.Fatalf("big-two: %v", doc)
	}
	// (big-one's VM unpins its objects as it ends, which may be just
	// after the stop returned.)
	cacheBytes := func() int64 {
		var total int64
		entries, _ := os.ReadDir(objects)
		for _, e := range entries {
			if info, err := e.Info(); err == nil {
				total += info.Size()
			}
		}
		return total
	}
	waitFor(t, 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(objects, big1))
		return os.IsNotExist(err)
	}, "the unused object was not evicted")
	if total := cacheBytes(); total > 1<<20 || metrics("ferry_store_cache_bytes") > 1<<20 {
		t.Fatalf("the cache holds %d bytes (metric %v), over its bound of 1 MiB", total, metrics("ferry_store_cache_bytes"))
	}
	if _, err := os.Stat(filepath.Join(objects, big2)); err != nil {
		t.Fatalf("the object in use is not cached: %v", err)
	}
}

// volumesApp reports and writes its volumes.
const volumesApp = `
import os, json
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    doc = {}
    if scope["path"] == "/write":
        with open("/state/kept", "w") as f:
            f.write("written before the restart")
        with open("/scratch/tmp", "w") as f:
            f.write("scratch")
        try:
            open("/opt/venv/new", "w").close()
            doc["venv_writable"] = True
        except OSError:
            doc["venv_writable"] = False
    doc.update({"kept": read("/state/kept"), "scratch": read("/scratch/tmp"), "venv": read("/opt/venv/venv.txt"),
                "state_size": os.statvfs("/state").f_blocks * os.statvfs("/state").f_frsize})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(doc).encode()})
`

// Volumes of each kind on the sandbox: immutable by ref (read-only),
// persistent (kept across a restart, its size enforced by its ext4
// image), ephemeral (empty at each boot); bad sizes and a missing ref are
// clear errors.
func TestSandboxVolumes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sandbox mounts volumes through loop devices")
	}
	requirePythonModules(t, "asyncio")
	requireTool(t, "curl")
	requireTool(t, "mkfs.ext4")
	st := newObjectStore(t)
	venv := st.add(squashfsOf(t, map[string]string{"venv.txt": "immutable content"}))
	code := writeApp(t, map[string]string{"main.py": volumesApp})
	config := fmt.Sprintf(`{"idle_timeout": "10m", "programs": {
		"vols": {"code": {"encoding": "plain", "entrypoint": "main:app", "path": %q}, "on": {"http": true},
			"volumes": [
				{"mount": "/opt/venv", "ref": %q, "use_latest": false},
				{"comment": "kept on this node", "mount": "/state", "name": "state", "persistence": "host", "size_mib": 16},
				{"mount": "/scratch", "ephemeral": true, "size_mib": 8}]},
		"missing": {"code": {"encoding": "plain", "entrypoint": "main:app", "path": %q}, "on": {"http": true},
			"volumes": [{"mount": "/opt/venv", "ref": %q}]},
		"huge": {"code": {"encoding": "plain", "entrypoint": "main:app", "path": %q}, "on": {"http": true},
			"volumes": [{"mount": "/scratch", "ephemeral": true, "size_mib": 1048576}]}}}`, code, venv, code, strings.Repeat("e", 64), code)
	stateDir := filepath.Join(t.TempDir(), "state")
	agent := serveAgent(t, config, agentOptions{}, "--store", st.url, "--state-dir", stateDir)
	url := "http://" + agent.addr
	bin, _ := buildAgent()
	program := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"program", "--admin", agent.admin}, args...)...).CombinedOutput()
		return string(out), err
	}
	get := func(path string) map[string]any {
		t.Helper()
		var doc map[string]any
		if out := curl(t, url+path); json.Unmarshal([]byte(out), &doc) != nil {
			t.Fatalf("%s answered %q", path, out)
		}
		return doc
	}

	doc := get("/vm/vols/")
	if doc["kept"] != nil || doc["scratch"] != nil || doc["venv"] != "immutable content" {
		t.Fatalf("first boot: %v", doc)
	}
	if size := doc["state_size"].(float64); size > 16<<20 || size < 8<<20 {
		t.Fatalf("the persistent volume is %v bytes, declared 16 MiB", size)
	}
	doc = get("/vm/vols/write")
	if doc["kept"] != "written before the restart" || doc["scratch"] != "scratch" || doc["venv_writable"] != false {
		t.Fatalf("after writing: %v", doc)
	}
	if out, err := program("restart", "vols"); err != nil {
		t.Fatalf("program restart: %v %s", err, out)
	}
	doc = get("/vm/vols/")
	if doc["kept"] != "written before the restart" || doc["scratch"] != nil || doc["venv"] != "immutable content" {
		t.Fatalf("after a restart the persistent volume must keep its file and the ephemeral one be empty: %v", doc)
	}
	image := filepath.Join(stateDir, "sandbox", "volumes", "vols", "state.ext4")
	if _, err := os.Stat(image); err != nil {
		t.Fatalf("the persistent volume's image: %v", err)
	}

	// A volume whose ref no store has: the boot fails, saying so.
	if code := curl(t, "-o", "/dev/null", "-w", "%{http_code}", url+"/vm/missing/"); code != "502" {
		t.Fatalf("a missing ref answered %s", code)
	}
	if log := agent.out.String(); !strings.Contains(log, "volumes[0] (/opt/venv): store: ref "+strings.Repeat("e", 64)) || !strings.Contains(log, "not found") {
		t.Fatalf("the agent's log does not explain the missing ref:\n%s", log)
	}
	// A volume larger than the disk's free space (less its reserve) is
	// refused: at deploy over the API, and at boot for a program of the
	// configuration file, whose status then says why.
	var fs unix.Statfs_t
	if err := unix.Statfs(stateDir, &fs); err != nil {
		t.Fatal(err)
	}
	if free := fs.Bavail * uint64(fs.Bsize); free >= 1<<40 {
		t.Logf("%d GiB free: a 1 TiB volume fits, its refusal is not checked", free>>30)
	} else {
		path := filepath.Join(t.TempDir(), "m.json")
		os.WriteFile(path, []byte(fmt.Sprintf(`{"code": {"entrypoint": "main:app", "path": %q}, "on": {"http": true}, "volumes": [{"mount": "/scratch", "ephemeral": true, "size_mib": 1048576}]}`, code)), 0o644)
		want := "ephemeral volumes[0] (/scratch) of 1048576 MiB does not fit on the host's disk: the filesystem of " + filepath.Join(stateDir, "sandbox", "volumes") + " has "
		out, err := program("deploy", "toobig", path)
		if err == nil || !strings.Contains(out, "programs.toobig: "+want) || !strings.Contains(out, "MiB free") {
			t.Errorf("deploying a 1 TiB volume with %d MiB free: %v %s", free>>20, err, out)
		}
		if out, err := program("status", "toobig"); err == nil {
			t.Errorf("the refused program was deployed: %s", out)
		}
		if code := curl(t, "-o", "/dev/null", "-w", "%{http_code}", url+"/vm/huge/"); code != "502" {
			t.Fatalf("a program whose volume does not fit answered %s", code)
		}
		out, err = program("status", "huge")
		if err != nil || !strings.Contains(out, "last_boot_error:") || !strings.Contains(out, want) {
			t.Errorf("the status does not say why the boot failed: %v %s", err, out)
		}
		if left, _ := filepath.Glob(filepath.Join(stateDir, "sandbox", "volumes", ".ephemeral-*")); len(left) != 0 {
			t.Errorf("a refused boot made an ephemeral image: %v", left)
		}
	}

	// Bad sizes are refused at deploy, naming the field.
	for body, field := range map[string]string{
		`{"mount": "/s", "persistent": true, "name": "s", "size_mib": 0}`:     "volumes[0].size_mib",
		`{"mount": "/s", "ephemeral": true, "size_mib": -5}`:                  "volumes[0].size_mib",
		`{"mount": "/s", "ephemeral": true, "size_mib": 2000000}`:             "volumes[0].size_mib",
		`{"mount": "/s", "ref": "abc"}`:                                       "volumes[0].ref",
		`{"mount": "/s", "persistence": "store", "name": "s", "size_mib": 1}`: "volumes[0].persistence",
	} {
		path := filepath.Join(t.TempDir(), "m.json")
		os.WriteFile(path, []byte(fmt.Sprintf(`{"code": {"entrypoint": "main:app", "path": %q}, "on": {"http": true}, "volumes": [%s]}`, code, body)), 0o644)
		if out, err := program("deploy", "bad", path); err == nil || !strings.Contains(out, "programs.bad."+field) {
			t.Errorf("volume %s: %v %s", body, err, out)
		}
	}

	// Once the agent is gone, no loop device holds the images and no
	// ephemeral image is left.
	agent.stop()
	if out, _ := exec.Command("losetup", "-j", image).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("a loop device still holds the volume: %s", out)
	}
	if left, _ := filepath.Glob(filepath.Join(stateDir, "sandbox", "volumes", ".ephemeral-*")); len(left) != 0 {
		t.Fatalf("ephemeral images left: %v", left)
	}
}

// stdlibApp is an ASGI app with nothing to import (quick under TCG): it
// answers with /data's file and what the ephemeral volume holds.
const stdlibApp = `
import os
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    scratch = os.listdir("/scratch")
    with open("/scratch/mine", "w") as f:
        f.write("x")
    body = ("%s|%s|%s" % (open("/data/hello.txt").read(), sorted(n for n in scratch if n != "lost+found"), os.path.basename(__file__))).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
`

// One boot under QEMU: zip code and zip data by ref, as raw drives init
// extracts, and an ephemeral volume.
func TestQEMUProgramByRef(t *testing.T) {
	images := requireImages(t)
	requireTool(t, "curl")
	st := newObjectStore(t)
	codeRef := st.add(zipArchive(t, map[string]string{"main.py": stdlibApp}))
	dataRef := st.add(zipArchive(t, map[string]string{"hello.txt": "data through a drive"}))
	config := fmt.Sprintf(`{"idle_timeout": "10m", "programs": {"byref": {
		"code": {"encoding": "zip", "entrypoint": "main:app", "ref": %q},
		"data": {"encoding": "zip", "ref": %q},
		"volumes": [{"mount": "/scratch", "ephemeral": true, "size_mib": 16}],
		"resources": {"vcpus": 1, "memory": 256}, "on": {"http": true}}}}`, codeRef, dataRef)
	state := t.TempDir()
	agent := serveAgent(t, config, agentOptions{}, "--backend", "qemu", "--images", images, "--state-dir", state,
		"--boot-timeout", "5m", "--store", st.url)
	if got := curl(t, "--max-time", "300", "http://"+agent.addr+"/vm/byref/"); got != "data through a drive|[]|main.py" {
		t.Fatalf("the program by ref answered %q", got)
	}
	if ephemeral, _ := filepath.Glob(filepath.Join(state, "qemu", "ephemeral", "*")); len(ephemeral) != 1 {
		t.Fatalf("want the running VM's ephemeral image, found %v", ephemeral)
	}
	agent.stop()
	if ephemeral, _ := filepath.Glob(filepath.Join(state, "qemu", "ephemeral", "*")); len(ephemeral) != 0 {
		t.Fatalf("ephemeral images outlived their VM: %v", ephemeral)
	}
}
