package boot

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/message"
)

func TestCheckInitResolvesSymlinksInsideTheRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
	os.Symlink("usr/sbin", filepath.Join(root, "sbin")) // Debian's merged /usr
	if err := checkInit(root, "/sbin/init"); err == nil || !strings.Contains(err.Error(), "no /sbin/init") {
		t.Fatalf("missing init: %v", err)
	}
	os.WriteFile(filepath.Join(root, "usr/sbin/init"), []byte("#!/bin/sh\n"), 0o644)
	if err := checkInit(root, "/sbin/init"); err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Fatalf("non-executable init: %v", err)
	}
	os.Chmod(filepath.Join(root, "usr/sbin/init"), 0o755)
	if err := checkInit(root, "/sbin/init"); err != nil {
		t.Fatalf("good init: %v", err)
	}
	// An absolute symlink is resolved inside the root too, not on the host.
	os.Symlink("/usr/sbin/init", filepath.Join(root, "init-link"))
	if err := checkInit(root, "/init-link"); err != nil {
		t.Fatalf("absolute link: %v", err)
	}
	os.Symlink("/bin/sh", filepath.Join(root, "escape"))
	if err := checkInit(root, "/escape"); err == nil {
		t.Fatal("a link to the host's /bin/sh counted as the image's init")
	}
}

func TestRemoveSameDeviceKeepsTheNewRootAndOtherFilesystems(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"init", "lib/modules/x/a.ko", "newroot/keep", "mnt/keep"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	mounted := false
	if os.Geteuid() == 0 {
		if err := unix.Mount("tmpfs", filepath.Join(dir, "mnt"), "tmpfs", 0, ""); err == nil {
			mounted = true
			defer unix.Unmount(filepath.Join(dir, "mnt"), unix.MNT_DETACH)
			os.WriteFile(filepath.Join(dir, "mnt/keep"), []byte("x"), 0o644)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		t.Fatal(err)
	}
	removeSameDevice(dir, st.Dev, filepath.Join(dir, "newroot"))
	for _, gone := range []string{"init", "lib"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s was not removed: %v", gone, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "newroot/keep")); err != nil {
		t.Errorf("the new root was touched: %v", err)
	}
	if mounted {
		if _, err := os.Stat(filepath.Join(dir, "mnt/keep")); err != nil {
			t.Errorf("another filesystem was touched: %v", err)
		}
	}
}

func TestTimelineEncodingRoundTrips(t *testing.T) {
	in := []message.TimelineEntry{{Phase: []byte("kernel"), BootNano: 1200000000}, {Phase: []byte("root"), BootNano: 1300000000}}
	out, err := DecodeTimeline(EncodeTimeline(in))
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("got %v %v", out, err)
	}
	if _, err := DecodeTimeline("kernel=x"); err == nil {
		t.Fatal("bad entry accepted")
	}
	var tl Timeline
	tl.Mark("mounts")
	tl.Prepend(in)
	if e := tl.Entries(); len(e) != 3 || string(e[0].Phase) != "kernel" || string(e[2].Phase) != "mounts" {
		t.Fatalf("prepend: %v", e)
	}
}
