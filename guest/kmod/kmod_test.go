package kmod

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// A modules.dep shaped like Debian's cloud kernel's: vsock transport
// depends on vsock and virtio_ring (via virtio).
const sampleDep = `kernel/net/vmw_vsock/vsock.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.zst: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/squashfs/squashfs.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
`

func TestResolveOrdersDependenciesFirst(t *testing.T) {
	idx, err := ParseDep(strings.NewReader(sampleDep))
	if err != nil {
		t.Fatal(err)
	}
	got, err := idx.Resolve("vmw_vsock_virtio_transport", "virtio-mmio", "squashfs")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "virtio_mmio", "squashfs"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("order %v\nwant  %v", got, want)
	}
	pos := map[string]int{}
	for i, n := range got {
		pos[n] = i
	}
	for mod, deps := range idx.deps {
		if _, ok := pos[mod]; !ok {
			continue
		}
		for _, d := range deps {
			if pos[d] > pos[mod] {
				t.Errorf("%s loads before its dependency %s", mod, d)
			}
		}
	}
}

func TestResolveErrors(t *testing.T) {
	idx, _ := ParseDep(strings.NewReader(sampleDep))
	if _, err := idx.Resolve("nonexistent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing module: %v", err)
	}
	if _, err := idx.Resolve("a"); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("cycle: %v", err)
	}
	idx.builtin["ext4"] = true
	if got, err := idx.Resolve("ext4"); err != nil || len(got) != 0 {
		t.Fatalf("built-in module: %v %v", got, err)
	}
	if _, err := ParseDep(strings.NewReader("no colon here\n")); err == nil {
		t.Fatal("malformed line accepted")
	}
}

func TestReadModuleDecompresses(t *testing.T) {
	elf := append([]byte("\x7fELF"), bytes.Repeat([]byte("module body "), 1000)...)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var xzBuf, gzBuf bytes.Buffer
	xw, _ := xz.NewWriter(&xzBuf)
	xw.Write(elf)
	xw.Close()
	gw := gzip.NewWriter(&gzBuf)
	gw.Write(elf)
	gw.Close()
	zw, _ := zstd.NewWriter(nil)
	zst := zw.EncodeAll(elf, nil)
	zw.Close()
	for _, p := range []string{write("m.ko", elf), write("m.ko.xz", xzBuf.Bytes()), write("m.ko.zst", zst), write("m.ko.gz", gzBuf.Bytes())} {
		got, err := ReadModule(p)
		if err != nil || !bytes.Equal(got, elf) {
			t.Errorf("%s: %d bytes, %v", filepath.Base(p), len(got), err)
		}
	}
	if _, err := ReadModule(write("bad.ko", []byte("not elf"))); err == nil {
		t.Error("non-ELF module accepted")
	}
	if _, err := ReadModule(write("bad.ko.xz", []byte("garbage"))); err == nil {
		t.Error("corrupt xz accepted")
	}
}

func TestOpenReadsBuiltin(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(sampleDep), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644)
	idx, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := idx.Resolve("ext4", "squashfs"); err != nil || !reflect.DeepEqual(got, []string{"squashfs"}) {
		t.Fatalf("got %v %v", got, err)
	}
	if idx.Path("squashfs") != filepath.Join(dir, "kernel/fs/squashfs/squashfs.ko") {
		t.Fatalf("path %s", idx.Path("squashfs"))
	}
	if _, err := Open(t.TempDir()); err == nil {
		t.Fatal("missing modules.dep accepted")
	}
}
