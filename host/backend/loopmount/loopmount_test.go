package loopmount

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func requireLoop(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mounts)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("needs loop devices (/dev/loop-control)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
}

// readAt reads a file below a detached mount, which needs no mount point.
func readAt(t *testing.T, mfd int, name string) string {
	t.Helper()
	fd, err := unix.Openat(mfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening %s in the mount: %v", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	b := make([]byte, 100)
	n, _ := f.Read(b)
	return string(b[:n])
}

func TestSquashfsImageMountsReadOnlyAndDetached(t *testing.T) {
	requireLoop(t, "mksquashfs")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "hello.txt"), []byte("from squashfs"), 0o644)
	image := filepath.Join(dir, "img.squashfs")
	if out, err := exec.Command("mksquashfs", src, image, "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v %s", err, out)
	}
	if fs, err := Detect(image); err != nil || fs != Squashfs {
		t.Fatalf("Detect: %s %v", fs, err)
	}
	mfd, err := Mount(image, Squashfs, true)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	if got := readAt(t, mfd, "hello.txt"); got != "from squashfs" {
		t.Fatalf("read %q", got)
	}
	if _, err := unix.Openat(mfd, "new", unix.O_CREAT|unix.O_WRONLY, 0o644); err == nil {
		t.Fatal("a read-only mount took a new file")
	}
}

func TestExt4ImageKeepsWhatIsWritten(t *testing.T) {
	requireLoop(t, "mkfs.ext4")
	image := filepath.Join(t.TempDir(), "vol.ext4")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(image, 8<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", image).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if fs, err := Detect(image); err != nil || fs != Ext4 {
		t.Fatalf("Detect: %s %v", fs, err)
	}
	mfd, err := Mount(image, Ext4, false)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Openat(mfd, "kept", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, []byte("still here"))
	unix.Fsync(fd)
	unix.Close(fd)
	unix.Close(mfd)
	// Unmounted once its last reference is gone: mount it again.
	var again int
	for range 100 {
		if again, err = Mount(image, Ext4, false); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(again)
	if got := readAt(t, again, "kept"); got != "still here" {
		t.Fatalf("read %q", got)
	}
	if _, err := Detect(filepath.Join(t.TempDir())); err == nil {
		t.Fatal("a directory detected as an image")
	}
}
