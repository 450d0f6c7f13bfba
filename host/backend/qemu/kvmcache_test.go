package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The probe's verdict is kept and taken back for the same key; another
// key, a damaged file or no key at all costs a probe again.
func TestKVMProbeVerdictIsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", kvmVerdictFile)
	probes := 0
	hangs := func() error {
		probes++
		return errors.New("the kernel printed nothing within 10s under KVM")
	}
	v, cached := cachedKVMProbe(path, "host A", hangs)
	if cached || v.Usable || v.err() == nil || probes != 1 {
		t.Fatalf("first probe: %+v cached=%v probes=%d", v, cached, probes)
	}
	v, cached = cachedKVMProbe(path, "host A", hangs)
	if !cached || probes != 1 || v.err() == nil || v.err().Error() != "the kernel printed nothing within 10s under KVM" {
		t.Fatalf("same key: %+v cached=%v probes=%d, want the kept verdict and reason, no probe", v, cached, probes)
	}
	works := func() error { probes++; return nil }
	v, cached = cachedKVMProbe(path, "host A, another kernel", works)
	if cached || !v.Usable || v.err() != nil || probes != 2 {
		t.Fatalf("another key: %+v cached=%v probes=%d, want a new probe", v, cached, probes)
	}
	if v, cached = cachedKVMProbe(path, "host A, another kernel", hangs); !cached || !v.Usable || probes != 2 {
		t.Fatalf("the new verdict: %+v cached=%v probes=%d", v, cached, probes)
	}
	if err := os.WriteFile(path, []byte(`{"key": "host A, another ker`), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, cached = cachedKVMProbe(path, "host A, another kernel", works); cached || probes != 3 {
		t.Fatalf("a damaged file: %+v cached=%v probes=%d, want a probe", v, cached, probes)
	}
	empty := filepath.Join(t.TempDir(), kvmVerdictFile)
	for range 2 {
		cachedKVMProbe(empty, "", works)
	}
	if _, err := os.Stat(empty); probes != 5 || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no key: %d probes (want 5), file: %v (want none)", probes, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// The key changes with the kernel's file (and the emulator's), so that a
// new kernel is probed again.
func TestKVMProbeKeyFollowsTheFiles(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm on this machine: the key names it, and there is nothing to probe without it")
	}
	dir := t.TempDir()
	qemu, kernel := filepath.Join(dir, "qemu-system-x86_64"), filepath.Join(dir, "vmlinuz")
	for _, f := range []string{qemu, kernel} {
		if err := os.WriteFile(f, []byte("v1"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	before, err := kvmProbeKey(qemu, kernel)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := kvmProbeKey(qemu, kernel); err != nil || again != before {
		t.Fatalf("the same files: %q, %v; want %q", again, err, before)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(kernel, later, later); err != nil {
		t.Fatal(err)
	}
	afterKernel, err := kvmProbeKey(qemu, kernel)
	if err != nil || afterKernel == before {
		t.Fatalf("a new kernel: %q, %v; want a key other than %q", afterKernel, err, before)
	}
	if err := os.WriteFile(qemu, []byte("v2, longer"), 0o755); err != nil {
		t.Fatal(err)
	}
	if afterQEMU, err := kvmProbeKey(qemu, kernel); err != nil || afterQEMU == afterKernel {
		t.Fatalf("a new emulator: %q, %v; want a key other than %q", afterQEMU, err, afterKernel)
	}
	if _, err := kvmProbeKey(qemu, filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing kernel gave a key")
	}
}
