package archive

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zip"
)

type entry struct {
	name string
	body string
	mode fs.FileMode
}

func makeZip(t *testing.T, entries ...entry) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate}
		if e.mode != 0 {
			h.SetMode(e.mode)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(e.body))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(buf.Bytes())
}

func extract(t *testing.T, r *bytes.Reader, lim Limits) (string, error) {
	dst := filepath.Join(t.TempDir(), "code")
	return dst, ExtractZip(context.Background(), r, r.Size(), dst, lim)
}

func TestExtractsFilesAndDirectories(t *testing.T) {
	dst, err := extract(t, makeZip(t,
		entry{name: "main.py", body: "app = 1\n"},
		entry{name: "pkg/", mode: fs.ModeDir | 0o755},
		entry{name: "pkg/mod.py", body: "x = 2\n"},
		entry{name: "bin/run", body: "#!/bin/sh\n", mode: 0o4755}, // setuid dropped
	), DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "pkg/mod.py")); string(b) != "x = 2\n" {
		t.Fatalf("pkg/mod.py = %q", b)
	}
	st, err := os.Stat(filepath.Join(dst, "bin/run"))
	if err != nil || st.Mode().Perm() != 0o755 || st.Mode()&fs.ModeSetuid != 0 {
		t.Fatalf("bin/run mode %v %v", st.Mode(), err)
	}
}

func TestRefusesUnsafeArchives(t *testing.T) {
	big := string(bytes.Repeat([]byte{0}, 1<<20))
	cases := map[string]struct {
		zip *bytes.Reader
		lim Limits
	}{
		"parent traversal":  {makeZip(t, entry{name: "../evil.py", body: "x"}), DefaultLimits},
		"nested traversal":  {makeZip(t, entry{name: "a/../../evil.py", body: "x"}), DefaultLimits},
		"absolute path":     {makeZip(t, entry{name: "/etc/passwd", body: "x"}), DefaultLimits},
		"backslash path":    {makeZip(t, entry{name: `..\evil.py`, body: "x"}), DefaultLimits},
		"symlink":           {makeZip(t, entry{name: "link", body: "/etc/passwd", mode: fs.ModeSymlink | 0o777}), DefaultLimits},
		"too many entries":  {makeZip(t, entry{name: "a", body: "1"}, entry{name: "b", body: "2"}, entry{name: "c", body: "3"}), Limits{MaxFiles: 2, MaxTotalBytes: 1 << 20}},
		"zip bomb by bytes": {makeZip(t, entry{name: "zeros", body: big}), Limits{MaxFiles: 10, MaxTotalBytes: 64 << 10}},
		"bomb across files": {makeZip(t, entry{name: "a", body: big}, entry{name: "b", body: big}), Limits{MaxFiles: 10, MaxTotalBytes: 3 << 19}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dst, err := extract(t, c.zip, c.lim)
			if !errors.Is(err, ErrUnsafe) {
				t.Fatalf("got %v, want ErrUnsafe", err)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dst), "evil.py")); err == nil {
				t.Fatal("a file was written outside the target")
			}
		})
	}
}

func TestRefusesToFollowPlantedLink(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "code")
	os.MkdirAll(dst, 0o755)
	outside := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(outside, []byte("safe"), 0o644)
	os.Symlink(outside, filepath.Join(dst, "main.py"))
	r := makeZip(t, entry{name: "main.py", body: "overwritten"})
	if err := ExtractZip(context.Background(), r, r.Size(), dst, DefaultLimits); err == nil {
		t.Fatal("extraction followed a symlink")
	}
	if b, _ := os.ReadFile(outside); string(b) != "safe" {
		t.Fatalf("file outside the target was changed to %q", b)
	}
}

func TestNotAZip(t *testing.T) {
	r := bytes.NewReader([]byte("this is not a zip archive"))
	if _, err := extract(t, r, DefaultLimits); err == nil {
		t.Fatal("garbage accepted")
	}
}
