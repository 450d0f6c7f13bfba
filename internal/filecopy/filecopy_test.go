package filecopy

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "a/b/dst")
	for _, perm := range []os.FileMode{0o755, 0o640} { // the second replaces the first
		if err := Copy(src, dst, perm); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(dst)
		if err != nil || st.Mode().Perm() != perm {
			t.Fatalf("%s: %v %v, want mode %v", dst, st.Mode(), err, perm)
		}
		if got, _ := os.ReadFile(dst); string(got) != "content" {
			t.Fatalf("copied %q", got)
		}
	}
	if err := Copy(filepath.Join(dir, "missing"), dst, 0o644); err == nil {
		t.Fatal("a missing source copied")
	}
}
