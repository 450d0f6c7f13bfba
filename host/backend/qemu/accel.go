package qemu

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// KVM ioctls (linux/kvm.h).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12
)

// ProbeKVM reports whether /dev/kvm can create a VM. A /dev/kvm that
// exists is not enough: nested virtualization is often advertised and
// unusable. The returned error says why KVM cannot be used.
func ProbeKVM() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/kvm: %w", err)
	}
	defer unix.Close(fd)
	version, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", errno)
	}
	if version != kvmAPIVersion {
		return fmt.Errorf("KVM API version %d, want %d", version, kvmAPIVersion)
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_CREATE_VM: %w", errno)
	}
	unix.Close(int(vm))
	return nil
}

// probeQEMUKVM starts the emulator paused with KVM and asks it to quit
// over QMP. Creating the vCPU sets its registers and MSRs, which is where
// a half-working nested KVM fails (QEMU aborts); exit status 0 means KVM
// works for this emulator.
func probeQEMUKVM(ctx context.Context, qemu string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "64",
		"-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"quit"}` + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		err = fmt.Errorf("qemu with KVM: %w: %s", err, firstLine(stderr.String()))
		if refusedOnItsOwn(ctx, cmd, stderr.String()) {
			return &kvmFinding{reason: err.Error()}
		}
		return err
	}
	return nil
}

// refusedOnItsOwn says whether the emulator cmd, which has been waited
// for, failed by its own decision before ctx ended: it exited with a
// non-zero status. Not when it was killed by a signal (ours at ctx's end,
// the OOM killer's), never started, or stopped by a signal it handles:
// QEMU ends on SIGINT, SIGTERM and SIGHUP (a Ctrl-C in the agent's
// terminal, systemd stopping the agent's group) with status 0, saying
// "terminating on signal" on its stderr.
func refusedOnItsOwn(ctx context.Context, cmd *exec.Cmd, stderr string) bool {
	if ctx.Err() != nil || cmd.ProcessState == nil || strings.Contains(stderr, "terminating on signal") {
		return false
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Exited() && ws.ExitStatus() != 0
}

// kernelProbeWait bounds how long probeKernelKVM waits for the kernel's
// first line. Under working KVM it comes within a second; a hung boot
// costs the agent this much once, at start, before it falls back to TCG.
const kernelProbeWait = 10 * time.Second

// probeKernelKVM boots kernel under KVM, as the VMs will run, and waits
// up to wait for its first line on the serial console ("Linux version
// ..."). Some nested KVMs pass probeQEMUKVM, and even run a few guest
// instructions, yet hang every Linux guest early in its boot: seen on
// this project's test machines, where the kernel's decompressor ran and
// the kernel itself never printed, with any CPU model. Nil means the
// kernel started.
func probeKernelKVM(ctx context.Context, qemu, kernel string, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1", "-serial", "stdio")
	cmd.WaitDelay = time.Second
	console, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting qemu: %w", err)
	}
	started := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(console)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Linux version") {
				started <- true
				return
			}
		}
		started <- false
	}()
	ok, hung := false, false
	select {
	case ok = <-started:
	case <-ctx.Done():
		hung = true
	}
	if ok || hung {
		cmd.Process.Kill()
	}
	// Otherwise the console ended: the emulator is on its way out, and
	// its exit status (not one our kill would make) says why. ctx bounds
	// the wait for it.
	cmd.Wait() // stderr is whole from here on
	switch {
	case ok:
		return nil
	case hung:
		return &kvmFinding{reason: fmt.Sprintf("the kernel printed nothing within %s under KVM (a nested KVM that hangs guests)", wait)}
	}
	err = fmt.Errorf("qemu ended before the kernel printed anything: %s", firstLine(stderr.String()))
	if refusedOnItsOwn(ctx, cmd, stderr.String()) {
		return &kvmFinding{reason: err.Error()}
	}
	return err
}

// firstLine is s's first line, trimmed.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i > 0 {
		s = s[:i]
	}
	return s
}

// hostTSCkHz reads the CPU clock from /proc/cpuinfo, for the guest's
// tsc_early_khz: under software emulation the kernel's TSC calibration
// can take long enough to hang a boot in four.
func hostTSCkHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(key) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil || mhz <= 0 {
				return 0, fmt.Errorf("cpu MHz %q", value)
			}
			return int(mhz * 1000), nil
		}
	}
	return 0, fmt.Errorf("no cpu MHz in /proc/cpuinfo")
}
