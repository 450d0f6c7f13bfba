package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU writes an executable script standing for qemu-system-x86_64
// that runs body (sh) and returns its path.
func fakeQEMU(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// The kernel probe passes once the kernel's first line is on the console,
// without waiting for the boot to go further; it fails, saying why, when
// nothing comes within the wait (a nested KVM that hangs guests, seen on
// this project's machines) or the emulator ends first, and it leaves no
// emulator behind.
func TestKernelProbeWaitsForTheKernelsFirstLine(t *testing.T) {
	ctx := context.Background()
	booting := fakeQEMU(t, `echo "Probing EDD... ok"; echo "[    0.000000] Linux version 6.1.0 (gcc)"; exec sleep 60`)
	began := time.Now()
	if err := probeKernelKVM(ctx, booting, "/img/vmlinuz", 20*time.Second); err != nil {
		t.Errorf("a kernel that prints: %v", err)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("the probe took %s: it should end at the kernel's first line", d)
	}

	hung := fakeQEMU(t, `echo "Probing EDD... ok"; exec sleep 60`)
	err := probeKernelKVM(ctx, hung, "/img/vmlinuz", 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "printed nothing within 500ms") {
		t.Errorf("a kernel that hangs: %v", err)
	}

	failing := fakeQEMU(t, `echo "qemu-system-x86_64: could not load kernel '$12'" >&2; exit 1`)
	err = probeKernelKVM(ctx, failing, "/img/vmlinuz", 20*time.Second)
	if err == nil || !strings.Contains(err.Error(), "ended before the kernel printed anything") || !strings.Contains(err.Error(), "could not load kernel") {
		t.Errorf("an emulator that fails: %v", err)
	}
}
