package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
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
		return &kvmFinding{reason: "the kernel printed nothing within 10s under KVM"}
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

// A probe that could not finish (here: the emulator killed by a signal,
// as a Ctrl-C in the agent's terminal does) is not a verdict: the next
// start probes again, and a success then is kept.
func TestKVMProbeFailureThatIsNoFindingIsNotKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), kvmVerdictFile)
	probes := 0
	interrupted := func() error {
		probes++
		return errors.New("qemu ended before the kernel printed anything: signal: interrupt")
	}
	v, cached := cachedKVMProbe(path, "host A", interrupted)
	if cached || v.Usable || v.err() == nil {
		t.Fatalf("interrupted probe: %+v cached=%v, want an unusable verdict, not from the file", v, cached)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an interrupted probe was kept: %v", err)
	}
	works := func() error { probes++; return nil }
	if v, cached = cachedKVMProbe(path, "host A", works); cached || !v.Usable || probes != 2 {
		t.Fatalf("after an interrupted probe: %+v cached=%v probes=%d, want a new probe that finds KVM usable", v, cached, probes)
	}
	if v, cached = cachedKVMProbe(path, "host A", interrupted); !cached || !v.Usable || probes != 2 {
		t.Fatalf("the success: %+v cached=%v probes=%d, want it kept", v, cached, probes)
	}
}

// refusedOnItsOwn tells an emulator that failed by its own decision (a
// finding about KVM) from one killed by a signal, stopped by one it
// handles (QEMU exits 0 on SIGINT, saying so), or never started.
func TestRefusedOnItsOwn(t *testing.T) {
	ctx := context.Background()
	refused := exec.Command("sh", "-c", "exit 1")
	if err := refused.Run(); err == nil || !refusedOnItsOwn(ctx, refused, "") {
		t.Fatalf("exit 1: err %v, refusedOnItsOwn false, want true", err)
	}
	killed := exec.Command("sh", "-c", "kill -INT $$; sleep 5")
	if err := killed.Run(); err == nil || refusedOnItsOwn(ctx, killed, "") {
		t.Fatalf("killed by SIGINT: err %v, want an error that is no finding", err)
	}
	handled := exec.Command("sh", "-c", "exit 0")
	if handled.Run(); refusedOnItsOwn(ctx, handled, "qemu-system-x86_64: terminating on signal 2 from pid 1") {
		t.Fatal("status 0 after a handled signal counted as a refusal")
	}
	said := exec.Command("sh", "-c", "exit 1")
	if said.Run(); refusedOnItsOwn(ctx, said, "qemu-system-x86_64: terminating on signal 15 from pid 1") {
		t.Fatal("an exit that says it was a signal counted as a refusal")
	}
	missing := exec.Command(filepath.Join(t.TempDir(), "no-such-qemu"))
	if err := missing.Run(); err == nil || refusedOnItsOwn(ctx, missing, "") {
		t.Fatalf("not started: err %v, want an error that is no finding", err)
	}
	timedOut, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	slow := exec.CommandContext(timedOut, "sh", "-c", "sleep 5; exit 1")
	if err := slow.Run(); err == nil || refusedOnItsOwn(timedOut, slow, "") {
		t.Fatalf("out of time: err %v, want an error that is no finding", err)
	}
}

// The kernel probe against stand-ins for the emulator: one that refuses
// KVM (exit 1) is a finding, one stopped by a signal it handles (QEMU's
// exit 0 after a Ctrl-C) is not, whichever comes first, its exit or our
// look at it, and a console that stays silent is the hang, a finding.
func TestKernelProbeVerdicts(t *testing.T) {
	dir := t.TempDir()
	fake := func(name, script string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return path
	}
	refuses := fake("refuses", `echo "qemu-system-x86_64: failed to initialize kvm: Permission denied" >&2; exit 1`)
	interrupted := fake("interrupted", `echo "qemu-system-x86_64: terminating on signal 2 from pid 1" >&2; exit 0`)
	silent := fake("silent", `exec sleep 30`)
	ctx := context.Background()
	var finding *kvmFinding
	for range 5 {
		if err := probeKernelKVM(ctx, refuses, "kernel", 10*time.Second); !errors.As(err, &finding) {
			t.Fatalf("an emulator that refuses KVM: %v, want a finding", err)
		}
		if err := probeKernelKVM(ctx, interrupted, "kernel", 10*time.Second); err == nil || errors.As(err, &finding) {
			t.Fatalf("an emulator stopped by a Ctrl-C: %v, want an error that is no finding", err)
		}
	}
	if err := probeKernelKVM(ctx, silent, "kernel", 200*time.Millisecond); !errors.As(err, &finding) {
		t.Fatalf("a silent console: %v, want the hang, a finding", err)
	}
}
