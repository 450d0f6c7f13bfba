package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// The qemu backend's tests boot real VMs: Debian's cloud kernel, the
// initrd with init and its modules, and the bookworm root image that
// `make rootfs` builds (cached in build/rootfs; about a minute the first
// time). Without KVM they run under software emulation, where a boot with
// FastAPI takes 10-20 s, so there are few of them and their timeouts are
// generous.

// buildImages runs `make rootfs` once per test binary.
var buildImages = sync.OnceValues(func() (string, error) {
	cmd := exec.Command("make", "-C", "..", "rootfs")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("make rootfs: %v\n%s", err, out)
	}
	return filepath.Abs("../build/rootfs")
})

func requireImages(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	for _, tool := range []string{"qemu-system-x86_64", "debootstrap", "mksquashfs", "depmod", "cpio", "mkfs.ext4", "e2fsck", "dumpe2fs", "ping"} {
		requireTool(t, tool)
	}
	dir, err := buildImages()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// volumeApp is the example app with two routes that keep a note on the
// persistent volume.
const volumeApp = `
from pathlib import Path
from fastapi import Request
from fastapi.responses import PlainTextResponse
from main import app

NOTE = Path("/srv/state/note.txt")

@app.post("/note")
async def write_note(request: Request):
    NOTE.write_bytes(await request.body())
    return {"written": NOTE.stat().st_size}

@app.get("/note", response_class=PlainTextResponse)
async def read_note():
    return NOTE.read_text() if NOTE.exists() else "no note"

def get(host, port):
    # A plain HTTP/1.0 GET by name: the guest's resolver, then TCP.
    import socket
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.settimeout(30)
        s.connect(addr)
        s.sendall(("GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % host).encode())
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.split(b"\r\n\r\n", 1)[1].decode()

@app.get("/fetch", response_class=PlainTextResponse)
async def fetch(host: str, port: int):
    import asyncio
    return await asyncio.to_thread(get, host, port)

def store(method, key, value=None):
    # The guest API, with the standard library: FERRY_API_URL is init's.
    import os, urllib.request
    req = urllib.request.Request(os.environ["FERRY_API_URL"] + "/v1/kv/" + key, data=value, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()

@app.put("/kv/{key}")
async def put_key(key: str, request: Request):
    import asyncio
    await asyncio.to_thread(store, "PUT", key, await request.body())
    return {"stored": key}

@app.get("/kv/{key}", response_class=PlainTextResponse)
async def get_key(key: str):
    import asyncio
    return (await asyncio.to_thread(store, "GET", key)).decode()
`

// The example FastAPI program in a real VM through host-agent --backend
// qemu: its JSON through the agent, a server outside reached by name
// through NAT, its IPv6 address answering from the host, a note written
// to a persistent volume and to the guest API's store in one boot and read
// back in the next, and a clean ext4 after each graceful stop.
func TestQEMUServesTheExampleWithNetworkAndPersistentVolume(t *testing.T) {
	images := requireImages(t)
	requireTool(t, "curl")
	code := t.TempDir()
	example, err := os.ReadFile("../examples/hello/main.py")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(code, "main.py"), example, 0o644)
	os.WriteFile(filepath.Join(code, "volume_app.py"), []byte(volumeApp), 0o644)
	state := t.TempDir()
	config := fmt.Sprintf(`{"idle_timeout": "10m", "programs": {"hello": {
		"code": {"encoding": "plain", "entrypoint": "volume_app:app", "interface": "asgi", "path": %q},
		"environment": {"internet": true},
		"volumes": [{"mount": "/srv/state", "persistent": true, "name": "state", "size_mib": 32}],
		"resources": {"vcpus": 1, "memory": 512},
		"on": {"http": true}}}}`, code)
	// The agent, its tap device and the ping run in a namespace of the
	// test's: no packet to the VM's private address leaves it. Its
	// upstream namespace is the VM's internet.
	ns := newTestNetns(t)
	up := newUpstream(t, ns, "")
	serveOutside(t, up)
	curl := ns.curl
	sock := filepath.Join(t.TempDir(), "admin.sock")
	agent := serveAgent(t, config, agentOptions{ns: ns}, "--backend", "qemu", "--images", images, "--state-dir", state,
		"--boot-timeout", "5m", "--admin", sock, "--dns", up.Router4)
	addr := agent.addr
	url := "http://" + addr + "/vm/hello"
	volume := filepath.Join(state, "qemu", "volumes", "hello", "state.ext4")
	bin, _ := buildAgent()
	programCmd := func(args ...string) string {
		out, err := exec.Command(bin, append([]string{"program", "--admin", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("program %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	// First boot: the example's JSON, then a note on the volume.
	began := time.Now()
	if body := curl(t, "--max-time", "300", url+"/"); !strings.Contains(body, `"message":"Hello from Ferry"`) {
		t.Fatalf("GET /: %s", body)
	}
	t.Logf("first boot and request: %s", time.Since(began).Round(time.Millisecond))
	note := fmt.Sprintf("written in boot 1 at %d", time.Now().UnixNano())
	if body := curl(t, "-X", "POST", "--data-binary", note, url+"/note"); !strings.Contains(body, fmt.Sprintf(`"written":%d`, len(note))) {
		t.Fatalf("POST /note: %s", body)
	}
	// The guest API through the VM's virtio transport: a key stored now
	// is read back in the next boot (it lives in the agent's store).
	if body := curl(t, "-X", "PUT", "--data-binary", note, url+"/kv/note"); !strings.Contains(body, `"stored":"note"`) {
		t.Fatalf("PUT /kv/note: %s", body)
	}

	// Through the tap, the VM reaches the outside by name, NATed to the
	// uplink's address.
	if got := curl(t, url+"/fetch?host="+name4+"&port="+outsidePort); got != up.Uplink4 {
		t.Errorf("the server outside saw %q, want the uplink's %s (NAT)", got, up.Uplink4)
	}

	// The VM's IPv6 address answers from the host side.
	guest6 := guestIPv6(t, ns)
	if out, err := ns.command("ping", "-6", "-c", "3", "-W", "10", guest6).CombinedOutput(); err != nil {
		t.Fatalf("ping %s: %v\n%s", guest6, err, out)
	}
	status := programCmd("status", "hello", "--json")
	if !strings.Contains(status, guest6) {
		t.Errorf("status does not show the VM's address %s: %s", guest6, status)
	}
	timeline1 := timelineOf(t, status)

	// A graceful stop: GOAWAY, init unmounts and reboots, QEMU exits.
	stopped := time.Now()
	programCmd("stop", "hello")
	t.Logf("graceful stop: %s", time.Since(stopped).Round(time.Millisecond))
	if strings.Contains(programCmd("status", "hello", "--json"), `"running": true`) {
		t.Fatal("still running after stop")
	}
	requireCleanExt4(t, volume)

	// Second boot, on demand: the note is still there.
	if body := curl(t, "--max-time", "300", url+"/note"); body != note {
		t.Fatalf("GET /note after a reboot: %q, want %q", body, note)
	}
	if body := curl(t, url+"/kv/note"); body != note {
		t.Fatalf("the guest API's key after a reboot: %q, want %q", body, note)
	}
	timeline2 := timelineOf(t, programCmd("status", "hello", "--json"))
	programCmd("stop", "hello")
	requireCleanExt4(t, volume)
	t.Logf("boot timelines:\n  boot 1: %s\n  boot 2: %s", timeline1, timeline2)
	// Each cold start's timeline is in the metrics, phase by phase.
	metrics := curl(t, "--unix-socket", sock, "http://admin/metrics") // on the admin API, not the public listener
	for _, phase := range []string{"kernel", "modules", "root", "switch", "overlay", "network", "volumes", "code", "app"} {
		if v := metricValue(t, metrics, fmt.Sprintf(`ferry_boot_phase_seconds_count{phase=%q,program="hello"}`, phase)); v != 2 {
			t.Errorf("boot phase %s counted %v times, want 2", phase, v)
		}
	}
	// The console (kernel and init) is in the program's logs.
	if out := programCmd("logs", "hello"); !strings.Contains(out, "ASGI workers ready") {
		t.Errorf("the VM's console is not in the program's logs:\n%s", out)
	}
}

// guestIPv6 finds the running VM's address: the tap device fyN in the
// agent's namespace ns carries the host's fd00:f3:7:N::1/64, the guest
// has ::2.
func guestIPv6(t *testing.T, ns *testNetns) string {
	t.Helper()
	nl := ns.netlink(t)
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Type() != "tuntap" || !strings.HasPrefix(l.Attrs().Name, "fy") {
			continue
		}
		addrs, _ := nl.AddrList(l, netlink.FAMILY_V6)
		for _, a := range addrs {
			if a.IP.IsPrivate() && strings.HasSuffix(a.IP.String(), "::1") {
				return strings.TrimSuffix(a.IP.String(), "1") + "2"
			}
		}
	}
	t.Fatal("no tap device with a VM address")
	return ""
}

func timelineOf(t *testing.T, statusJSON string) string {
	t.Helper()
	var st struct{ Timeline string }
	if err := json.Unmarshal([]byte(statusJSON), &st); err != nil || st.Timeline == "" {
		t.Fatalf("no timeline in %s (%v)", statusJSON, err)
	}
	return st.Timeline
}

// requireCleanExt4 checks an unmounted volume image: e2fsck finds nothing
// to fix and the superblock says the filesystem was cleanly unmounted.
func requireCleanExt4(t *testing.T, image string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", image).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", image, err, out)
	}
	out, err := exec.Command("dumpe2fs", "-h", image).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Filesystem state:         clean") {
		t.Fatalf("volume not clean:\n%s", out)
	}
}

// A root image without init, a missing kernel and a kernel that is not a
// kernel each give a clear error quickly instead of a hang.
func TestQEMUBadImageOrKernelIsAClearError(t *testing.T) {
	images := requireImages(t)
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	// A wrong path: the agent refuses to start.
	out, err := exec.Command(bin, "run", "--backend", "qemu", "--images", images, "--kernel", "/nonexistent/vmlinuz", "../examples/hello", "main:app").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "kernel: stat /nonexistent/vmlinuz: no such file or directory") {
		t.Fatalf("missing kernel: %v\n%s", err, out)
	}

	// An image without /sbin/init: init in the initrd says so and the VM
	// powers off; the agent reports it with the console lines.
	empty := t.TempDir()
	os.MkdirAll(filepath.Join(empty, "sbin"), 0o755)
	noInit := filepath.Join(t.TempDir(), "noinit.squashfs")
	if out, err := exec.Command("mksquashfs", empty, noInit, "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, out)
	}
	// Not a kernel at all.
	notKernel := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(notKernel, []byte("this is not a kernel"), 0o644)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"image without init", []string{"--rootfs", noInit}, "no /sbin/init"},
		{"not a kernel", []string{"--kernel", notKernel}, "qemu exited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			began := time.Now()
			cmd := exec.Command(bin, append(append([]string{"run", "--backend", "qemu", "--images", images, "--boot-timeout", "3m",
				"--state-dir", t.TempDir(), "--listen", "127.0.0.1:0"}, tc.args...), "../examples/hello", "main:app")...)
			out, err := cmd.CombinedOutput()
			took := time.Since(began)
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("want an error with %q, got %v:\n%s", tc.want, err, out)
			}
			if took > 2*time.Minute {
				t.Fatalf("took %s, the boot timeout's length; want a quick failure", took)
			}
			t.Logf("failed in %s", took.Round(time.Millisecond))
		})
	}
}
