package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/blockdev"
	"github.com/ferry-vm/ferry/protocol/message"
)

// TimelineEnv carries the initramfs stage's timeline to the init it hands
// over to (phase=nanoseconds,...).
const TimelineEnv = "FERRY_BOOT_TIMELINE"

// EarlyMounts are what the initramfs stage needs: enough to load modules
// and find the root device. SwitchRoot moves them into the new root.
var EarlyMounts = SystemMounts[:3] // /proc, /sys, /dev

// MountEarly mounts EarlyMounts (one already there is fine).
func MountEarly() error {
	for _, m := range EarlyMounts {
		if err := m.mount(); err != nil && !errors.Is(err, unix.EBUSY) {
			return err
		}
	}
	return nil
}

// InInitramfs reports whether the root filesystem is the kernel's initial
// ramfs (rootfs, a ramfs or tmpfs), the only root SwitchRoot will empty.
func InInitramfs() bool {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// RootOptions say which root to switch to.
type RootOptions struct {
	Device string        // vda, /dev/vda or serial:NAME
	FS     string        // squashfs, ext4, or empty to try each
	Wait   time.Duration // for the device to appear (its driver probes asynchronously)
	Init   string        // the program to hand over to, inside the new root
}

// SwitchRoot is the initramfs stage's last step, as switch_root(8) does
// it: mount the root image read-only at /newroot, check that it has an
// init, move /proc, /sys and /dev into it, delete the initramfs's files to
// free their memory, make the new root / and exec its init with the same
// arguments. It returns only on failure, before anything is deleted when
// the failure is the image's (no device, no filesystem, no init).
func SwitchRoot(ctx context.Context, opt RootOptions, tl *Timeline) error {
	const newRoot = "/newroot"
	if opt.Init == "" {
		opt.Init = "/sbin/init"
	}
	waitCtx, cancel := context.WithTimeout(ctx, opt.Wait)
	dev, err := blockdev.Wait(waitCtx, blockdev.System, opt.Device)
	cancel()
	if err != nil {
		return fmt.Errorf("root device %s did not appear within %s: %w", opt.Device, opt.Wait, err)
	}
	if err := blockdev.Mount(dev, newRoot, opt.FS, true); err != nil {
		return fmt.Errorf("root image: %w", err)
	}
	if err := checkInit(newRoot, opt.Init); err != nil {
		unix.Unmount(newRoot, 0)
		return fmt.Errorf("root image on %s: %w", dev, err)
	}
	tl.Mark("root")
	for _, m := range EarlyMounts {
		if err := unix.Mount(m.Target, newRoot+m.Target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("moving %s into the root image (the image needs an empty %s): %w", m.Target, m.Target, err)
		}
	}
	if InInitramfs() {
		var st unix.Stat_t
		if err := unix.Lstat("/", &st); err == nil {
			removeSameDevice("/", st.Dev, newRoot)
		}
	}
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the root image onto /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the root image: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	env := append(os.Environ(), TimelineEnv+"="+EncodeTimeline(tl.Entries()))
	argv := append([]string{opt.Init}, os.Args[1:]...)
	return fmt.Errorf("exec %s: %w", opt.Init, unix.Exec(opt.Init, argv, env))
}

// checkInit checks that init exists in root as an executable regular
// file, resolving symlinks (Debian's /sbin -> usr/sbin) inside root.
func checkInit(root, init string) error {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, strings.TrimPrefix(init, "/"), &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if err != nil {
		return fmt.Errorf("no %s: %w", init, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", init)
	}
	return nil
}

// removeSameDevice deletes everything under dir that is on device dev,
// never crossing into another filesystem and never touching skip.
func removeSameDevice(dir string, dev uint64, skip string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if path == skip {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(path, &st) != nil || st.Dev != dev {
			continue
		}
		if e.Type()&fs.ModeDir != 0 {
			removeSameDevice(path, dev, skip)
			unix.Rmdir(path)
			continue
		}
		unix.Unlink(path)
	}
}

// EncodeTimeline renders entries for TimelineEnv.
func EncodeTimeline(entries []message.TimelineEntry) string {
	parts := make([]string, len(entries))
	for i, e := range entries {
		parts[i] = string(e.Phase) + "=" + strconv.FormatUint(e.BootNano, 10)
	}
	return strings.Join(parts, ",")
}

// DecodeTimeline parses what EncodeTimeline wrote.
func DecodeTimeline(s string) ([]message.TimelineEntry, error) {
	if s == "" {
		return nil, nil
	}
	var out []message.TimelineEntry
	for _, part := range strings.Split(s, ",") {
		phase, nanos, ok := strings.Cut(part, "=")
		n, err := strconv.ParseUint(nanos, 10, 64)
		if !ok || phase == "" || err != nil {
			return nil, errors.New("bad timeline entry " + strconv.Quote(part))
		}
		out = append(out, message.TimelineEntry{Phase: []byte(phase), BootNano: n})
	}
	return out, nil
}

// Prepend puts earlier entries (from the initramfs stage) before the
// timeline's own.
func (t *Timeline) Prepend(entries []message.TimelineEntry) {
	t.mu.Lock()
	t.entries = append(append([]message.TimelineEntry(nil), entries...), t.entries...)
	t.mu.Unlock()
}
