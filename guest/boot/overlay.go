package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/blockdev"
)

// overlayBase is where the filesystem holding the overlay's writable layer
// (tmpfs, or a persistent disk) is mounted before the switch. After the
// switch it stays mounted under the old root, out of sight, for as long as
// the overlay uses it.
const overlayBase = "/run/ferry-overlay"

// movedMounts are carried from the old root into the new one. /run is not
// moved (it holds the overlay's own tmpfs); a fresh one is mounted by
// MountSystem afterwards.
var movedMounts = []string{"/proc", "/sys", "/dev", "/tmp"}

// OverlayRoot turns a read-only root into a writable one: an overlay whose
// lower layer is the current root and whose upper layer lives on tmpfs, so
// writes work and vanish at power-off. It must run after MountSystem (it
// uses /run and moves /proc, /sys, /dev and /tmp across) and after the
// overlay module is loaded. Afterwards init's root and working directory
// are the overlay; call MountSystem again to mount a fresh /run.
//
// It works the way switch_root does (move the new root onto / and chroot
// into it) rather than with pivot_root, so it also works when init was
// started chrooted, as in the sandbox backend.
//
// On failure before the switch, everything is put back as it was and the
// old root stays in place.
func OverlayRoot() error {
	return overlayRoot(func() error {
		if err := unix.Mount("tmpfs", overlayBase, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("mounting tmpfs on %s: %w", overlayBase, err)
		}
		return nil
	})
}

// upperWait bounds how long OverlayRootOn waits for its device (its
// driver probes asynchronously).
const upperWait = 10 * time.Second

// OverlayRootOn is OverlayRoot with the writable layer on the ext4
// filesystem of device (vdc or serial:NAME) instead of tmpfs: what is
// written to the root is kept from one boot to the next (an instance's
// persistent root). The filesystem's layers are its directories upper and
// work, made at first use. Seal the Upper it returns before powering off.
func OverlayRootOn(device string) (*Upper, error) {
	fd := -1
	err := overlayRoot(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), upperWait)
		defer cancel()
		dev, err := blockdev.Wait(ctx, blockdev.System, device)
		if err != nil {
			return fmt.Errorf("the writable layer's device: %w", err)
		}
		if err := blockdev.Mount(dev, overlayBase, "ext4", false); err != nil {
			return fmt.Errorf("the writable layer: %w", err)
		}
		// A handle on the disk's mount, which the switch puts out of
		// sight: Seal reaches it through /proc/self/fd.
		if fd, err = unix.Open(overlayBase, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			unix.Unmount(overlayBase, unix.MNT_DETACH)
			return fmt.Errorf("the writable layer: %w", err)
		}
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	return &Upper{fd: fd}, nil
}

// Upper is the disk under a root OverlayRootOn made, which cannot be
// unmounted while it is under the root.
type Upper struct{ fd int }

// sealTries bounds Seal's attempts: processes killed just before may
// still hold files open for writing for a moment.
const sealTries = 10

// Seal makes the root read-only, then the disk under it: everything is
// written out and the disk's filesystem is left clean, as an unmount
// would leave it. Call it last, once nothing writes any more; the root
// stays read-only.
func (u *Upper) Seal() error {
	var err error
	for i := range sealTries {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if err = unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			err = fmt.Errorf("sealing the root: making it read-only: %w", err)
			continue
		}
		disk := fmt.Sprintf("/proc/self/fd/%d", u.fd)
		if err = unix.Mount("", disk, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			err = fmt.Errorf("sealing the root: making its disk read-only: %w", err)
			continue
		}
		return nil
	}
	return err
}

// overlayRoot is OverlayRoot with mountUpper mounting the filesystem of
// the writable layer on overlayBase.
func overlayRoot(mountUpper func() error) error {
	if err := os.MkdirAll(overlayBase, 0o755); err != nil {
		return fmt.Errorf("overlay root: %w", err)
	}
	if err := mountUpper(); err != nil {
		return fmt.Errorf("overlay root: %w", err)
	}
	upper, work, root := filepath.Join(overlayBase, "upper"), filepath.Join(overlayBase, "work"), filepath.Join(overlayBase, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			unix.Unmount(overlayBase, unix.MNT_DETACH)
			return fmt.Errorf("overlay root: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=/,upperdir=%s,workdir=%s", upper, work)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		unix.Unmount(overlayBase, unix.MNT_DETACH)
		return fmt.Errorf("overlay root: mounting overlay (%s): %w", opts, err)
	}
	var moved []string
	undo := func(cause error) error {
		errs := []error{cause}
		for i := len(moved) - 1; i >= 0; i-- {
			if err := unix.Mount(filepath.Join(root, moved[i]), moved[i], "", unix.MS_MOVE, ""); err != nil {
				errs = append(errs, fmt.Errorf("moving %s back: %w", moved[i], err))
			}
		}
		os.Chdir("/")
		unix.Unmount(root, unix.MNT_DETACH)
		unix.Unmount(overlayBase, unix.MNT_DETACH)
		return fmt.Errorf("overlay root: %w", errors.Join(errs...))
	}
	points, _ := MountPoints()
	for _, m := range movedMounts {
		if !points[m] {
			continue
		}
		dst := filepath.Join(root, m)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return undo(err)
		}
		if err := unix.Mount(m, dst, "", unix.MS_MOVE, ""); err != nil {
			return undo(fmt.Errorf("moving %s: %w", m, err))
		}
		moved = append(moved, m)
	}
	if err := os.Chdir(root); err != nil {
		return undo(err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return undo(fmt.Errorf("moving the overlay onto /: %w", err))
	}
	// From here the overlay is mounted over the old root; only init's own
	// view of / remains to change.
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("overlay root: chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("overlay root: %w", err)
	}
	return nil
}
