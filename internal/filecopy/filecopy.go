// Package filecopy copies one file to a new place, for both sides: init
// copying a plain code file into its code directory, the qemu backend
// staging a single code file to pack it.
package filecopy

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Copy copies the file src to dst with permissions perm, making dst's
// directories (0755) and replacing a file already there.
func Copy(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, perm) // a replaced file keeps its mode otherwise, and the umask applies
}
