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
// work, made at first use.
func OverlayRootOn(device string) error {
	return overlayRoot(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), upperWait)
		defer cancel()
		dev, err := blockdev.Wait(ctx, blockdev.System, device)
		if err != nil {
			return fmt.Errorf("the writable layer's device: %w", err)
		}
		if err := blockdev.Mount(dev, overlayBase, "ext4", false); err != nil {
			return fmt.Errorf("the writable layer: %w", err)
		}
		return nil
	})
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
