// Package blockdev finds and mounts the guest's block devices: by kernel
// name (vdb) or by the serial the host gave the drive (serial:NAME, read
// from /sys/block/*/serial), waiting for a device whose driver is still
// probing. init uses it for the root image, the code drive and volumes.
package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths says where devices and their sysfs entries are; tests point them
// into a temporary directory.
type Paths struct {
	Dev      string // /dev
	SysBlock string // /sys/block
}

// System are the paths of a running Linux system.
var System = Paths{Dev: "/dev", SysBlock: "/sys/block"}

// Find resolves a device spec (vdb, /dev/vdb or serial:NAME) to a /dev path.
func Find(p Paths, spec string) (string, error) {
	if serial, ok := strings.CutPrefix(spec, "serial:"); ok {
		entries, err := os.ReadDir(p.SysBlock)
		if err != nil {
			return "", fmt.Errorf("listing block devices: %w", err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(p.SysBlock, e.Name(), "serial"))
			if err == nil && strings.TrimSpace(string(b)) == serial {
				return filepath.Join(p.Dev, e.Name()), nil
			}
		}
		return "", fmt.Errorf("no block device with serial %q", serial)
	}
	dev := spec
	if !filepath.IsAbs(dev) {
		dev = filepath.Join(p.Dev, spec)
	}
	st, err := os.Stat(dev)
	if err != nil {
		return "", fmt.Errorf("device %s: %w", spec, errors.Unwrap(err))
	}
	if st.Mode()&os.ModeDevice == 0 {
		return "", fmt.Errorf("%s is not a device", dev)
	}
	return dev, nil
}

// Wait is Find retried until the device appears or ctx ends; the error
// then is Find's last.
func Wait(ctx context.Context, p Paths, spec string) (string, error) {
	for {
		dev, err := Find(p, spec)
		if err == nil {
			return dev, nil
		}
		select {
		case <-ctx.Done():
			return "", err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// AutoFS are tried in order when no filesystem type is named.
var AutoFS = []string{"squashfs", "ext4", "vfat", "xfs", "btrfs"}

// Mount mounts dev on target (created if missing) as fs, or as the first
// of AutoFS that works when fs is empty. squashfs is always read-only.
func Mount(dev, target, fs string, readOnly bool) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	candidates := AutoFS
	if fs != "" {
		candidates = []string{fs}
	}
	var errs []error
	for _, t := range candidates {
		var flags uintptr
		if readOnly || t == "squashfs" {
			flags |= unix.MS_RDONLY
		}
		err := unix.Mount(dev, target, t, flags, "")
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("as %s: %w", t, err))
	}
	return fmt.Errorf("cannot mount %s on %s: %w", dev, target, errors.Join(errs...))
}
