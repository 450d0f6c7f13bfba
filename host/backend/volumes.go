package backend

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// PersistentImage is the image of the persistent volume name in dir.
func PersistentImage(dir, name string) string {
	return filepath.Join(dir, name+".ext4")
}

// PersistentVolume returns a program's persistent volume image in dir,
// creating it as an empty ext4 filesystem of sizeMiB on first use. An
// existing image is kept as it is (its data is the point), even if the
// declared size changed. Both backends use the same image format: the
// sandbox mounts it through a loop device, qemu gives it to the VM as a
// drive.
func PersistentVolume(ctx context.Context, dir, name string, sizeMiB int) (image string, created bool, err error) {
	if name == "" {
		return "", false, errors.New("a persistent volume needs a name (the manifest gives volumeI to those without one)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, err
	}
	image = PersistentImage(dir, name)
	if _, err := os.Stat(image); err == nil {
		return image, false, nil
	}
	tmp := image + ".tmp"
	defer os.Remove(tmp)
	if err := MakeExt4(ctx, tmp, name, sizeMiB); err != nil {
		return "", false, err
	}
	if err := os.Rename(tmp, image); err != nil {
		return "", false, err
	}
	return image, true, nil
}

// MakeExt4 creates path as an empty ext4 filesystem of sizeMiB (a sparse
// file: blocks are allocated as they are written), labelled label.
func MakeExt4(ctx context.Context, path, label string, sizeMiB int) error {
	if sizeMiB <= 0 || sizeMiB > math.MaxInt64>>20 {
		return fmt.Errorf("volume %s: a size of %d MiB", label, sizeMiB)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		f.Close()
		return err
	}
	f.Close()
	if len(label) > 16 {
		label = label[:16]
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 for volume %s: %w: %s", label, err, strings.TrimSpace(string(out)))
	}
	return nil
}
