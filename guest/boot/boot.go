// Package boot owns the first and last moments of init as PID 1: mounting
// the system filesystems, the boot timeline measured against kernel boot
// time, and the final sync, unmount and power-off (or reboot).
package boot

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/message"
)

// Mount is one filesystem init mounts.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// SystemMounts are mounted in order at boot.
var SystemMounts = []Mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// MountSystem makes mount propagation private (so nothing leaks to a
// parent namespace) and mounts SystemMounts, skipping those already
// mounted. /proc counts as mounted only if it belongs to init's own PID
// namespace, /sys only if it shows init's own network namespace. It
// returns the targets it mounted.
func MountSystem() ([]string, error) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("making mounts private: %w", err)
	}
	var mounted []string
	var errs []error
	for _, m := range SystemMounts {
		if isMounted(m) {
			continue
		}
		if err := m.mount(); err != nil {
			errs = append(errs, err)
			continue
		}
		mounted = append(mounted, m.Target)
	}
	return mounted, errors.Join(errs...)
}

// mount creates the mount point and mounts m on it.
func (m Mount) mount() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.Target, err)
	}
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if errors.Is(err, unix.EPERM) && m.Flags&unix.MS_RDONLY == 0 {
		// In a user namespace (the sandbox backend) the kernel mounts a
		// proc or sysfs only as restricted as the one already visible,
		// which is read-only there.
		err = unix.Mount(m.Source, m.Target, m.FSType, m.Flags|unix.MS_RDONLY, m.Data)
	}
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
	}
	return nil
}

func isMounted(m Mount) bool {
	switch m.Target {
	case "/proc":
		// A /proc inherited from another PID namespace shows the wrong
		// processes: it only counts if it knows us by our own pid.
		self, err := os.Readlink("/proc/self")
		return err == nil && self == strconv.Itoa(os.Getpid())
	case "/sys":
		// A sysfs shows the network devices of the namespace that mounted
		// it: one inherited from the host (a sandbox's read-only view)
		// only counts if it shows ours.
		return sysfsIsOurs()
	}
	points, err := MountPoints()
	if err != nil {
		return false
	}
	return points[m.Target]
}

// sysfsIsOurs reports whether /sys is a sysfs listing the network
// devices of init's own network namespace (/proc/net/dev).
func sysfsIsOurs() bool {
	var st unix.Statfs_t
	if unix.Statfs("/sys", &st) != nil || st.Type != unix.SYSFS_MAGIC {
		return false
	}
	entries, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return false
	}
	inSys := map[string]bool{}
	for _, e := range entries {
		inSys[e.Name()] = true
	}
	dev, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		return true // cannot tell: keep what is there
	}
	ours := 0
	for _, line := range strings.Split(string(dev), "\n") {
		name, _, found := strings.Cut(line, ":")
		if name = strings.TrimSpace(name); found && name != "" {
			if !inSys[name] {
				return false
			}
			ours++
		}
	}
	return ours == len(inSys)
}

// MountPoints returns the current mount points (from /proc/self/mountinfo).
func MountPoints() (map[string]bool, error) {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, err
	}
	points := make(map[string]bool, len(mounts))
	for _, m := range mounts {
		points[m.Mountpoint] = true
	}
	return points, nil
}

// Timeline records when each boot phase ended, in CLOCK_BOOTTIME (time
// since the kernel started, including suspend).
type Timeline struct {
	mu      sync.Mutex
	entries []message.TimelineEntry
}

// BootTime returns the time since the kernel started.
func BootTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Mark records that phase has just ended and returns the boot time.
func (t *Timeline) Mark(phase string) time.Duration {
	now := BootTime()
	t.mu.Lock()
	t.entries = append(t.entries, message.TimelineEntry{Phase: []byte(phase), BootNano: uint64(now)})
	t.mu.Unlock()
	return now
}

// Entries returns a copy of the timeline.
func (t *Timeline) Entries() []message.TimelineEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]message.TimelineEntry(nil), t.entries...)
}

// String renders the timeline on one line (message.FormatTimeline).
func (t *Timeline) String() string { return message.FormatTimeline(t.Entries()) }

// Unmount unmounts targets in reverse order, detaching what stays busy.
func Unmount(targets []string) error {
	var errs []error
	for i := len(targets) - 1; i >= 0; i-- {
		if err := unix.Unmount(targets[i], 0); err != nil {
			if err2 := unix.Unmount(targets[i], unix.MNT_DETACH); err2 != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", targets[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// PowerOff syncs and powers off, or reboots when reboot is set (what
// Firecracker expects). Inside a PID namespace this ends the namespace,
// and its parent sees init killed by SIGINT (power off) or SIGHUP (reboot).
func PowerOff(reboot bool) error {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	return unix.Reboot(cmd)
}
