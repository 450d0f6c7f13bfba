// Package archive extracts program code and input data from zip archives
// safely: no entry may escape the target directory (zip-slip), links and
// device files are refused, and the number of entries and the bytes
// actually written are bounded whatever the archive's headers claim (zip
// bombs).
package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zip"
)

// Limits bound an extraction.
type Limits struct {
	MaxFiles      int   // entries, directories included
	MaxTotalBytes int64 // bytes written, counted while writing
}

// DefaultLimits suit program code: 100,000 entries, 4 GiB.
var DefaultLimits = Limits{MaxFiles: 100_000, MaxTotalBytes: 4 << 30}

// ErrUnsafe marks archives refused for safety (paths, links, limits).
var ErrUnsafe = errors.New("unsafe archive")

func unsafe(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsafe, fmt.Sprintf(format, args...))
}

// ExtractZipFile extracts the zip archive at src into dst.
func ExtractZipFile(ctx context.Context, src, dst string, lim Limits) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if st.Mode()&fs.ModeDevice != 0 {
		// A block device: its size comes from seeking to the end.
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return fmt.Errorf("size of %s: %w", src, err)
		}
	}
	return ExtractZip(ctx, f, size, dst, lim)
}

// ExtractZip extracts a zip archive into dst, which is created if needed.
// On error, what was extracted so far is left in place for inspection; the
// caller decides whether to remove it.
func ExtractZip(ctx context.Context, r io.ReaderAt, size int64, dst string, lim Limits) error {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return fmt.Errorf("reading zip archive: %w", err)
	}
	if len(zr.File) > lim.MaxFiles {
		return unsafe("%d entries, limit %d", len(zr.File), lim.MaxFiles)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	remaining := lim.MaxTotalBytes
	for _, f := range zr.File {
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := safeName(f.Name)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		mode := f.Mode()
		switch {
		case mode.IsDir():
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			continue
		case !mode.IsRegular():
			return unsafe("entry %q is a %s, only files and directories are allowed", f.Name, mode.Type())
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		n, err := extractFile(f, target, mode.Perm()&0o755, remaining)
		if err != nil {
			return err
		}
		remaining -= n
	}
	return nil
}

// safeName checks an entry name and returns it as a local relative path.
func safeName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) || strings.Contains(name, `\`) {
		return "", unsafe("entry name %q is not allowed", name)
	}
	clean := path.Clean(strings.TrimSuffix(name, "/"))
	if path.IsAbs(name) || !filepath.IsLocal(clean) {
		return "", unsafe("entry %q would be written outside the target directory", name)
	}
	return filepath.FromSlash(clean), nil
}

// extractFile writes one entry, refusing to follow a link at the target and
// to write more than budget bytes.
func extractFile(f *zip.File, target string, perm fs.FileMode, budget int64) (int64, error) {
	rc, err := f.Open()
	if err != nil {
		return 0, fmt.Errorf("entry %q: %w", f.Name, err)
	}
	defer rc.Close()
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscallNoFollow, perm)
	if err != nil {
		return 0, fmt.Errorf("entry %q: %w", f.Name, err)
	}
	n, err := io.Copy(out, io.LimitReader(rc, budget+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("entry %q: %w", f.Name, err)
	}
	if n > budget {
		return n, unsafe("archive expands beyond %d bytes (at entry %q)", budget, f.Name)
	}
	return n, nil
}
