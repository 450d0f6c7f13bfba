// Package loopmount mounts a filesystem image file (squashfs, ext4) for a
// sandbox without touching the host's mount table: the image is attached
// to a free loop device that clears itself once unused, and mounted with
// the kernel's new mount API as a detached mount (fsopen, fsconfig,
// fsmount). The caller passes the mount's descriptor to the sandbox,
// which attaches it in its own mount namespace; when the last reference
// goes, the filesystem is unmounted and the loop device released.
package loopmount

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Filesystem types Detect recognises.
const (
	Squashfs = "squashfs"
	Ext4     = "ext4" // the ext4 driver mounts ext2 and ext3 too
)

// Detect returns the filesystem type of an image by its superblock's
// magic: squashfs ("hsqs" at 0) or ext2/3/4 (0xEF53 at 1080).
func Detect(image string) (string, error) {
	f, err := os.Open(image)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 1082)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("reading %s: %w", image, err)
	}
	head = head[:n]
	switch {
	case len(head) >= 4 && string(head[:4]) == "hsqs":
		return Squashfs, nil
	case len(head) >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF:
		return Ext4, nil
	}
	return "", fmt.Errorf("%s is neither a squashfs nor an ext2/3/4 image", image)
}

// Mount attaches image to a loop device and returns a detached mount of
// its filesystem fstype (read-only when readOnly). The descriptor is
// close-on-exec; closing it (and every attached copy going away)
// unmounts the filesystem and frees the loop device.
func Mount(image, fstype string, readOnly bool) (int, error) {
	loop, err := attach(image, readOnly)
	if err != nil {
		return -1, err
	}
	// The mount holds the device from here; the loop device clears
	// itself (autoclear) once the filesystem is gone.
	defer loop.Close()
	fsfd, err := unix.Fsopen(fstype, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen %s: %w", fstype, err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigSetString(fsfd, "source", loop.Name()); err != nil {
		return -1, fmt.Errorf("mounting %s: source %s: %w", image, loop.Name(), err)
	}
	if readOnly {
		if err := unix.FsconfigSetFlag(fsfd, "ro"); err != nil {
			return -1, fmt.Errorf("mounting %s read-only: %w", image, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, fmt.Errorf("mounting %s as %s: %w", image, fstype, err)
	}
	attr := unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	if readOnly {
		attr |= unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return -1, fmt.Errorf("fsmount %s: %w", image, err)
	}
	return mfd, nil
}

// attach binds image to a free loop device with autoclear.
func attach(image string, readOnly bool) (*os.File, error) {
	flags := os.O_RDWR
	loFlags := uint32(unix.LO_FLAGS_AUTOCLEAR)
	if readOnly {
		flags = os.O_RDONLY
		loFlags |= unix.LO_FLAGS_READ_ONLY
	}
	backing, err := os.OpenFile(image, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer backing.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop devices: %w", err)
	}
	defer ctl.Close()
	// Another process may take the free device first: try again.
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("finding a free loop device: %w", err)
		}
		dev, err := os.OpenFile(fmt.Sprintf("/dev/loop%d", n), flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("loop device %d: %w", n, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: unix.LoopInfo64{Flags: loFlags}}
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) || attempt == 20 {
			return nil, fmt.Errorf("attaching %s to %s: %w", image, dev.Name(), err)
		}
		time.Sleep(time.Millisecond)
	}
}
