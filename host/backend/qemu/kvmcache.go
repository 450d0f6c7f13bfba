package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// kvmVerdictFile is where, under the backend's state directory, the
// verdict of the last KVM probe is kept.
const kvmVerdictFile = "kvm-probe.json"

// kvmVerdict is what a KVM probe found, for the host, emulator and kernel
// its key names.
type kvmVerdict struct {
	Key    string `json:"key"`
	Usable bool   `json:"usable"`
	Reason string `json:"reason,omitempty"` // why KVM is not usable
}

// kvmProbeKey names what the probe's verdict depends on: this boot of the
// host (/proc/sys/kernel/random/boot_id), /dev/kvm as it is now (loading
// the module again makes a new one), the emulator's binary and the
// kernel's file (each by path, size and modification time). A verdict of
// another key is not taken.
func kvmProbeKey(qemu, kernel string) (string, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("the host's boot id: %w", err)
	}
	parts := []string{"boot " + strings.TrimSpace(string(boot))}
	var kvm unix.Stat_t
	if err := unix.Stat("/dev/kvm", &kvm); err != nil {
		return "", fmt.Errorf("/dev/kvm: %w", err)
	}
	parts = append(parts, fmt.Sprintf("kvm %d:%d %d.%d", kvm.Dev, kvm.Ino, kvm.Ctim.Sec, kvm.Ctim.Nsec))
	if path, err := exec.LookPath(qemu); err == nil {
		qemu = path
	}
	for _, file := range []string{qemu, kernel} {
		abs, err := filepath.Abs(file)
		if err != nil {
			return "", err
		}
		st, err := os.Stat(abs)
		if err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("%s %d %d", abs, st.Size(), st.ModTime().UnixNano()))
	}
	return strings.Join(parts, "; "), nil
}

// kvmFinding is a probe's finding that KVM does not work for this
// emulator and kernel: the emulator refused it (exited with an error
// status of its own), or the kernel hung under it. A probe that could not
// finish (the emulator not started, killed or stopped by a signal, as a
// Ctrl-C in the agent's terminal does, or out of time waiting for itself)
// returns another error, and that is not kept (refusedOnItsOwn).
type kvmFinding struct{ reason string }

func (e *kvmFinding) Error() string { return e.reason }

// cachedKVMProbe returns probe's verdict, taking it from the file at
// path when it was found for the same key, else running probe and keeping
// its verdict there for the agents that start after this one: a success,
// or a kvmFinding; any other failure is returned and not kept, so the
// next agent probes again. cached says the verdict came from the file.
// An empty key, or a file that cannot be read or written, only costs a
// probe.
func cachedKVMProbe(path, key string, probe func() error) (v kvmVerdict, cached bool) {
	if key != "" {
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &v) == nil && v.Key == key {
			return v, true
		}
	}
	err := probe()
	v = kvmVerdict{Key: key, Usable: err == nil}
	if err != nil {
		v.Reason = err.Error()
	}
	var finding *kvmFinding
	if err != nil && !errors.As(err, &finding) {
		return v, false
	}
	if b, merr := json.Marshal(v); merr == nil && key != "" {
		writeFileAtomic(path, b)
	}
	return v, false
}

// err is the verdict as an error: nil when KVM is usable.
func (v kvmVerdict) err() error {
	if v.Usable {
		return nil
	}
	return errors.New(v.Reason)
}

// writeFileAtomic replaces the file at path with b, or leaves it as it
// was: two agents starting together never read half a file.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
