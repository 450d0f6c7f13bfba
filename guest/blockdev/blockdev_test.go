package blockdev

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFindBySerialAndName(t *testing.T) {
	dir := t.TempDir()
	p := Paths{Dev: filepath.Join(dir, "dev"), SysBlock: filepath.Join(dir, "sys")}
	os.MkdirAll(filepath.Join(p.SysBlock, "vdc"), 0o755)
	os.WriteFile(filepath.Join(p.SysBlock, "vdc", "serial"), []byte("persist\n"), 0o644)
	dev, err := Find(p, "serial:persist")
	if err != nil || dev != filepath.Join(p.Dev, "vdc") {
		t.Fatalf("got %s %v", dev, err)
	}
	if _, err := Find(p, "serial:other"); err == nil {
		t.Fatal("unknown serial found")
	}
	// A regular file is not a device.
	os.MkdirAll(p.Dev, 0o755)
	os.WriteFile(filepath.Join(p.Dev, "vdb"), nil, 0o644)
	if _, err := Find(p, "vdb"); err == nil {
		t.Fatal("a regular file passed as a device")
	}
	if dev, err := Find(p, "/dev/null"); err != nil || dev != "/dev/null" {
		t.Fatalf("absolute device path: %s %v", dev, err)
	}
}

func TestWaitGivesUpWithTheLastError(t *testing.T) {
	dir := t.TempDir()
	p := Paths{Dev: dir, SysBlock: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Wait(ctx, p, "serial:root"); err == nil || err.Error() != `no block device with serial "root"` {
		t.Fatalf("got %v", err)
	}
	// A device that appears while waiting is found.
	go func() {
		time.Sleep(50 * time.Millisecond)
		os.MkdirAll(filepath.Join(dir, "vda"), 0o755)
		os.WriteFile(filepath.Join(dir, "vda", "serial"), []byte("root"), 0o644)
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if dev, err := Wait(ctx2, p, "serial:root"); err != nil || dev != filepath.Join(dir, "vda") {
		t.Fatalf("got %s %v", dev, err)
	}
}
