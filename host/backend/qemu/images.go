package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/internal/filecopy"
)

// codeImage packs a program's code into a read-only squashfs for the VM's
// code drive, under cacheDir: the tree of the directory src, or, when
// fileName is set, the single file src as fileName (which may have
// directories, pkg/main.py) in an image of its own. Images are named
// after a digest of the tree (paths, modes, sizes, modification times)
// and of fileName, so unchanged code is packed once.
func codeImage(ctx context.Context, cacheDir, src, fileName string) (string, error) {
	digest, err := treeDigest(src, fileName)
	if err != nil {
		return "", fmt.Errorf("code %s: %w", src, err)
	}
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return "", err
	}
	image := filepath.Join(cacheDir, digest+".squashfs")
	if _, err := os.Stat(image); err == nil {
		return image, nil
	}
	tmp, err := os.CreateTemp(cacheDir, digest+".*.tmp")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	tree := src
	if fileName != "" {
		dir, err := os.MkdirTemp(cacheDir, digest+".*.tree")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(dir)
		if err := os.Chmod(dir, 0o755); err != nil { // the image's root directory
			return "", err
		}
		st, err := os.Stat(src)
		if err != nil {
			return "", fmt.Errorf("code %s: %w", src, err)
		}
		if err := filecopy.Copy(src, filepath.Join(dir, fileName), st.Mode().Perm()); err != nil {
			return "", fmt.Errorf("code %s: %w", src, err)
		}
		tree = dir
	}
	cmd := exec.CommandContext(ctx, "mksquashfs", tree, tmp.Name(), "-noappend", "-comp", "zstd", "-all-root", "-quiet", "-no-progress")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mksquashfs %s: %w: %s", src, err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp.Name(), image); err != nil {
		return "", err
	}
	return image, nil
}

// treeDigest sums what identifies a directory tree's content cheaply (or a
// single file's, with the name it gets).
func treeDigest(dir, fileName string) (string, error) {
	h := sha256.New()
	if fileName != "" {
		fmt.Fprintf(h, "as %q\n", fileName)
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		fmt.Fprintf(h, "%q %o %d %d\n", rel, info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:24], nil
}

// persistentVolume returns a program's persistent volume image
// (backend.PersistentVolume).
func persistentVolume(ctx context.Context, dir, name string, sizeMiB int) (image string, created bool, err error) {
	return backend.PersistentVolume(ctx, dir, name, sizeMiB)
}
