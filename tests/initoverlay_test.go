package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildPortServer compiles the static test HTTP server once.
var buildPortServer = sync.OnceValues(func() (string, error) {
	return goBuild("ferry-portserver-", "portserver", "./testdata/portserver")
})

// readOnlyRoot builds a minimal root filesystem holding only init and a
// static HTTP server as the program, and bind-mounts it read-only onto
// itself, as a VM's root image would be.
func readOnlyRoot(t *testing.T) string {
	t.Helper()
	bin, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	server, err := buildPortServer()
	if err != nil {
		t.Fatal(err)
	}
	root := varTempDir(t)
	for _, d := range []string{"sbin", "proc", "sys", "dev", "run", "tmp", "etc", "code"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for src, dst := range map[string]string{bin: "sbin/init", server: "code/app"} {
		if out, err := exec.Command("cp", src, filepath.Join(root, dst)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("from the image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	if err := unix.Mount("", root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("read-only remount: %v", err)
	}
	return root
}

var overlayTestConfig = map[string]any{
	"program_id": "overlay", "interface": "executable", "entrypoint": "app",
	"code":            map[string]any{"encoding": "directory", "path": "/code"},
	"hostname":        "ferry-overlay",
	"authorized_keys": []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOverlayTestKeyOverlayTestKeyOverlayTest1 test"},
}

// With ferry.overlay=1 a read-only root becomes writable: init writes
// /etc/hosts into a tmpfs layer, and the image underneath is untouched.
func TestOverlayRootMakesReadOnlyImageWritable(t *testing.T) {
	requireRoot(t)
	root := readOnlyRoot(t)
	g := startGuestWith(t, guestOptions{bin: "/sbin/init", root: root, cmdline: "ferry.overlay=1"})
	r := g.configure(t, overlayTestConfig)
	if !r.OK {
		t.Fatalf("configuration failed on the overlay root: %s / %s: %s\n%s", r.Phase, r.Field, r.Message, g.stderr.String())
	}
	if !strings.Contains(g.stderr.String(), "root is a writable overlay") {
		t.Errorf("init did not report the overlay:\n%s", g.stderr.String())
	}
	// Init's root, seen through /proc, is the overlay with the new file.
	inGuest, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(g.cmd.Process.Pid), "root/etc/hosts"))
	if err != nil || !strings.Contains(string(inGuest), "ferry-overlay") {
		t.Fatalf("guest /etc/hosts: %v %q", err, inGuest)
	}
	keys, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(g.cmd.Process.Pid), "root/root/.ssh/authorized_keys"))
	if err != nil || !strings.Contains(string(keys), "OverlayTestKey") {
		t.Fatalf("guest authorized_keys: %v %q", err, keys)
	}
	onImage, err := os.ReadFile(filepath.Join(root, "etc/hosts"))
	if err != nil || string(onImage) != "from the image\n" {
		t.Fatalf("the image changed: %v %q", err, onImage)
	}
	var mountinfo []byte
	mountinfo, err = os.ReadFile(filepath.Join("/proc", strconv.Itoa(g.cmd.Process.Pid), "mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	var rootFS string
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) > 8 && f[4] == "/" {
			rootFS = f[len(f)-3] // the last / mount is the visible one
		}
	}
	if rootFS != "overlay" {
		t.Fatalf("guest root is %q, want overlay\n%s", rootFS, mountinfo)
	}
}

// Without the flag the same read-only root makes the configuration fail
// with a structured error, and init stays up to report it.
func TestReadOnlyRootWithoutOverlayIsAStructuredError(t *testing.T) {
	requireRoot(t)
	root := readOnlyRoot(t)
	g := startGuestWith(t, guestOptions{bin: "/sbin/init", root: root})
	r := g.configure(t, overlayTestConfig)
	if r.OK || string(r.Field) != "authorized_keys" || !strings.Contains(string(r.Message), "read-only") {
		t.Fatalf("configuration on a read-only root answered %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.sess.Ping(ctx); err != nil {
		t.Fatalf("init stopped answering: %v", err)
	}
}
