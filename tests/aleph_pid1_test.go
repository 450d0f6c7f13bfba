package tests

// Ferry's init as PID 1 under the reference runtime's supervisor (issue
// 19, docs/aleph-compat.md): what init does only as PID 1 of its own
// namespaces, booted with Firecracker's kernel command line and no ferry.*
// parameter: the host name set from vm_hash, the code and the volumes
// mounted from the drives the document names, and on halt, when the
// first of the two lines the supervisor waits for arrives, every drive
// unmounted and closed, then init ending the VM with a reboot.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/ferry-vm/ferry/internal/filecopy"
	"github.com/ferry-vm/ferry/internal/syncbuf"
)

// firecrackerArgs is the kernel command line aleph-vm gives its VMs
// (src/aleph/vm/hypervisors/firecracker/config.py BootSource.args): no
// ferry.* parameter, so init boots in the reference mode.
const firecrackerArgs = "reboot=k panic=1 pci=off noapic nomodules random.trust_cpu=on ro"

// guestShare is where the stand-in for the vsock device's sockets appears
// inside the guest (alephvm's -share).
const guestShare = "/tmp/vsock"

// referenceHostname is the host name init1.py's setup_system derives from
// vm_hash, computed by its own lines of Python.
func referenceHostname(t *testing.T, vmHash string) string {
	t.Helper()
	script := `import base64, sys
item_hash_binary = base64.b16decode(sys.argv[1].encode().upper())
print(base64.b32encode(item_hash_binary).decode().strip("=").lower())`
	out, err := exec.Command(debianPython, "-c", script, vmHash).Output()
	if err != nil {
		t.Fatalf("computing the reference's host name: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// describe lists mounts as "SOURCE on TARGET type FS".
func describe(ms []*mountinfo.Info) string {
	var parts []string
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s on %s type %s", m.Source, m.Mountpoint, m.FSType))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// mountsAt returns the mounts of a mount namespace, read from an open
// /proc/PID/mountinfo (which keeps the namespace alive), whose mount point
// is target.
func mountsAt(t *testing.T, f *os.File, target string) []*mountinfo.Info {
	t.Helper()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	all, err := mountinfo.GetMountsFromReader(f, mountinfo.SingleEntryFilter(target))
	if err != nil {
		t.Fatalf("reading init's mounts: %v", err)
	}
	return all
}

// startAlephVM starts init as PID 1 of new PID, mount, UTS, IPC and
// network namespaces, behind alephvm (the VM's drives and vsock device),
// with Firecracker's kernel command line; the supervisor's sockets are set
// up as startAlephGuest's. drives are the VM's drives by name (vdb ...).
func startAlephVM(t *testing.T, drives map[string]loopVolume) *alephGuest {
	t.Helper()
	requirePythonModules(t, "fastapi")
	initBin, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	vmBin, err := goBuild("ferry-alephvm-", "alephvm", "./testdata/alephvm")
	if err != nil {
		t.Fatal(err)
	}
	// Outside /tmp, which the guest covers with its own.
	dir := varTempDir(t)
	share, layer := filepath.Join(dir, "vsock"), filepath.Join(dir, "devlayer")
	for _, d := range []string{share, layer} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "init")
	if err := filecopy.Copy(initBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	g := &alephGuest{sup: supervisor{uds: filepath.Join(share, "v.sock")}, guest: filepath.Join(share, "guest.sock"), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	g.readyL, err = net.Listen("unix", g.sup.uds+"_52")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.readyL.Close() })
	firecrackerVsock(t, g.sup.uds, g.guest)
	args := []string{"-layer", layer, "-share", share + "=" + guestShare}
	for name, d := range drives {
		args = append(args, "-drive", fmt.Sprintf("%s=%d:%d", name, d.major, d.minor))
	}
	args = append(args, "--", bin, "-cmdline", firecrackerArgs, "-transport", "unix:"+guestShare+"/guest.sock", "-host-uds", guestShare+"/v.sock", "-debug")
	g.cmd = exec.Command(vmBin, args...)
	g.cmd.Stdout, g.cmd.Stderr = g.out, g.out
	g.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := startLocked(g.cmd, func(err error) { g.err = err; close(g.done) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-g.done:
		default:
			g.cmd.Process.Kill() // PID 1: its namespace goes with it
			<-g.done
		}
		if t.Failed() || os.Getenv("FERRY_TEST_INIT_LOG") != "" {
			t.Logf("init output:\n%s", g.out.String())
		}
	})
	return g
}

// squashfsDrive attaches a squashfs image of files.
func squashfsDrive(t *testing.T, files map[string]string) loopVolume {
	t.Helper()
	mksquashfs := requireTool(t, "mksquashfs")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	for name, content := range files {
		path := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "image.squashfs")
	if out, err := exec.Command(mksquashfs, src, img, "-quiet", "-noappend").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v %s", err, out)
	}
	return attachLoop(t, img)
}

// TestAlephAsPID1 is a squashfs program as aleph-vm's supervisor boots it
// (program.py get_volumes_for_program): rootfs vda, the code drive vdb
// mounted at /opt/code, then the program's volumes, here a persistent ext4
// on vdc and a read-only squashfs on vdd.
func TestAlephAsPID1(t *testing.T) {
	requireRoot(t)
	e2fsck := requireTool(t, "e2fsck")
	debugfs := requireTool(t, "debugfs")
	persistent := newLoopVolume(t)
	drives := map[string]loopVolume{
		"vdb": squashfsDrive(t, map[string]string{"main.py": alephApp}),
		"vdc": persistent,
		"vdd": squashfsDrive(t, map[string]string{"shared/hello.txt": "read-only data\n"}),
	}
	g := startAlephVM(t, drives)
	pid := g.cmd.Process.Pid

	if v := g.sup.waitForInit(t, g.readyL); v != "2.0.0" {
		t.Fatalf("ready signal announces version %q, want 2.0.0", v)
	}
	apiL, err := net.Listen("unix", g.sup.uds+"_53")
	if err != nil {
		t.Fatal(err)
	}
	defer apiL.Close()
	go http.Serve(apiL, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"from":"the supervisor"}`))
	}))

	// What get_volumes_for_program sends for squashfs code: no code in the
	// document, the drive vdb at /opt/code first, then the volumes.
	mountsWanted := []struct{ target, source, fs string }{
		{"/opt/code", "/dev/vdb", "squashfs"},
		{"/mnt/persistent", "/dev/vdc", "ext4"},
		{"/mnt/shared", "/dev/vdd", "squashfs"},
	}
	doc := configDoc("2.0.0", "squashfs", []byte{}, "main:app", map[string]any{
		"volumes": []any{
			map[string]any{"mount": "/opt/code", "device": "vdb", "read_only": true},
			map[string]any{"mount": "/mnt/persistent", "device": "vdc", "read_only": false},
			map[string]any{"mount": "/mnt/shared", "device": "vdd", "read_only": true},
		},
		"variables": map[string]string{"GREETING": "hello PID 1", "TEST_VOLUME": "/mnt/persistent", "TEST_READ_ONLY": "/mnt/shared/shared/hello.txt"},
	})
	if reply := g.sup.configure(t, doc); reply["success"] != true {
		t.Fatalf("configuration failed: %v", reply)
	}

	if _, err := os.Stat(filepath.Join("/proc/fs/ext4", filepath.Base(persistent.dev))); err != nil {
		t.Fatalf("the kernel does not list the mounted ext4 in /proc/fs/ext4: %v", err)
	}
	// init's mount namespace, held open: its mounts can be read until the
	// end, even after init is gone.
	mounts, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mounts.Close()
	for _, w := range mountsWanted {
		if m := mountsAt(t, mounts, w.target); len(m) != 1 || m[0].FSType != w.fs || m[0].Source != w.source {
			t.Fatalf("%s is not %s's %s: %s", w.target, w.source, w.fs, describe(m))
		}
	}

	t.Run("variables and hostname", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/env", "", nil, nil)
		var seen map[string]string
		if err := json.Unmarshal(r.body, &seen); err != nil || r.status != 200 {
			t.Fatalf("%d %s %v", r.status, r.body, err)
		}
		want := referenceHostname(t, vmHash)
		if seen["hostname"] != want || seen["address"] != want {
			t.Errorf("the app sees host name %q and ALEPH_ADDRESS_TO_USE %q, want the reference's %q", seen["hostname"], seen["address"], want)
		}
		if seen["greeting"] != "hello PID 1" || seen["version"] != "2.0.0" || seen["api_socket"] != "/tmp/socat-socket" || seen["code"] != "/opt/code" {
			t.Errorf("the app sees %v", seen)
		}
		if filepath.Base(seen["pid1"]) != "init" {
			t.Errorf("PID 1 is %q, not init", seen["pid1"])
		}
	})
	t.Run("guest API bridge", func(t *testing.T) {
		r := g.sup.runCode(t, "GET", "/api", "", nil, nil)
		if r.status != 200 || string(r.body) != `{"from":"the supervisor"}` {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("volumes", func(t *testing.T) {
		if r := g.sup.runCode(t, "GET", "/persist", "", nil, nil); r.status != 200 {
			t.Fatalf("writing on the persistent volume: %d %s", r.status, r.body)
		}
		if r := g.sup.runCode(t, "GET", "/daemon", "", nil, nil); r.status != 200 {
			t.Fatalf("starting a daemon: %d %s", r.status, r.body)
		}
		if r := g.sup.runCode(t, "GET", "/read-only", "", nil, nil); r.status != 200 || string(r.body) != `{"content":"read-only data\n"}` {
			t.Fatalf("reading the read-only volume: %d %s", r.status, r.body)
		}
	})

	// Halt (MicroVM.shutdown): the ack, STOP, STOPZ. When the first line
	// arrives the drives are already unmounted: the supervisor kills the
	// VM a second after the second.
	c, br := g.sup.dial(t, []byte("halt"))
	defer c.Close()
	msg, err := br.ReadString('\n')
	if err != nil || msg != "STOP\n" {
		t.Fatalf("halt answered %q %v", msg, err)
	}
	for _, w := range mountsWanted {
		if m := mountsAt(t, mounts, w.target); len(m) != 0 {
			t.Errorf("%s is still mounted when halt is answered: %s", w.target, describe(m))
		}
	}
	// Nor is the ext4 only detached, held by the daemon: the kernel lists
	// a mounted ext4 in /proc/fs/ext4 until it is closed.
	if _, err := os.Stat(filepath.Join("/proc/fs/ext4", filepath.Base(persistent.dev))); err == nil {
		t.Errorf("the ext4 of %s is still open when halt is answered", persistent.dev)
	}
	if msg2, err := br.ReadString('\n'); msg2 != "STOPZ\n" {
		t.Fatalf("halt's second line %q %v", msg2, err)
	}
	select {
	case <-g.done:
	case <-time.After(60 * time.Second):
		t.Fatal("init did not end the VM after halt")
	}
	// A reboot, as Firecracker needs (it has no power-off): in a PID
	// namespace, its init is killed by SIGHUP.
	if !killedBy(g.err, syscall.SIGHUP) {
		t.Fatalf("init ended with %v, want the reboot of its PID namespace (SIGHUP)", g.err)
	}
	for _, w := range mountsWanted {
		if m := mountsAt(t, mounts, w.target); len(m) != 0 {
			t.Errorf("%s is still mounted in init's namespace after it ended: %s", w.target, describe(m))
		}
	}
	mounts.Close() // the namespace goes

	if out, err := exec.Command(e2fsck, "-n", "-f", persistent.dev).CombinedOutput(); err != nil {
		t.Fatalf("volume not clean after halt: %v\n%s", err, out)
	}
	if out, err := exec.Command(debugfs, "-R", "cat /written-by-app", persistent.dev).Output(); err != nil || string(out) != "persisted\n" {
		t.Fatalf("the app's file on the volume: %q %v", out, err)
	}
	for _, want := range []string{"booting as the reference runtime's init", "ready signal sent", "unmounted volumes", "powering off"} {
		if !strings.Contains(g.out.String(), want) {
			t.Errorf("init's log lacks %q", want)
		}
	}
}
