package backend

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeSpace is a SpaceFunc over made-up filesystems: a directory is on
// the filesystem of its longest prefix in fs.
type fakeSpace map[string]FSSpace

func (f fakeSpace) space(dir string) (FSSpace, error) {
	best := ""
	for prefix := range f {
		if strings.HasPrefix(dir, prefix) && len(prefix) > len(best) {
			best = prefix
		}
	}
	if best == "" {
		return FSSpace{}, errors.New("no filesystem")
	}
	return f[best], nil
}

const gib = 1 << 30

func TestReserve(t *testing.T) {
	for _, c := range []struct{ total, want uint64 }{
		{0, 0},
		{10 * gib, gib / 2},  // 5% of a small disk
		{20 * gib, gib},      // where the two meet
		{1000 * gib, gib},    // at most 1 GiB on a large one
		{100 << 20, 5 << 20}, // a 100 MiB tmpfs keeps 5 MiB
	} {
		if got := Reserve(c.total); got != c.want {
			t.Errorf("Reserve(%d) = %d, want %d", c.total, got, c.want)
		}
	}
}

// Volumes that fit with the reserve left pass; the new volumes of one
// boot are counted together, on their own filesystem; the refusal names
// the volumes, their sizes, the free space and the reserve.
func TestCheckSpace(t *testing.T) {
	fs := fakeSpace{
		"/var": {Dev: 1, Avail: 10 * gib, Total: 100 * gib},  // reserve 1 GiB: 9 GiB for volumes
		"/tmp": {Dev: 2, Avail: 100 << 20, Total: 100 << 20}, // reserve 5 MiB: 95 MiB
	}
	vol := func(what, dir string, mib int) NewImage { return NewImage{What: what, Dir: dir, SizeMiB: mib} }
	ok := [][]NewImage{
		nil,
		{vol("a", "/var/v/p", 9<<10)},
		{vol("a", "/var/v/p", 5<<10), vol("b", "/var/e", 4<<10), vol("c", "/tmp", 95)},
	}
	for _, images := range ok {
		if err := CheckSpace(fs.space, images); err != nil {
			t.Errorf("%+v: %v", images, err)
		}
	}
	refused := []struct {
		images []NewImage
		names  []string // what the refusal names
	}{
		{[]NewImage{vol("ephemeral volumes[0] (/scratch)", "/var/e", 1<<20)},
			[]string{"ephemeral volumes[0] (/scratch) of 1048576 MiB does not fit", "/var/e has 10240 MiB free", "1024 MiB stay free", "9216 MiB for new volumes"}},
		{[]NewImage{vol("a", "/var/v/p", 9<<10+1)}, []string{"a of 9217 MiB does not fit"}},
		// Each fits alone, not together.
		{[]NewImage{vol("c", "/tmp", 10), vol("a", "/var/v/p", 5<<10), vol("b", "/var/e", 5<<10)},
			[]string{"a of 5120 MiB and b of 5120 MiB, 10240 MiB together, do not fit"}},
		{[]NewImage{vol("a", "/tmp", 60), vol("b", "/tmp", 20), vol("c", "/tmp", 20)},
			[]string{"a of 60 MiB, b of 20 MiB and c of 20 MiB, 100 MiB together, do not fit", "has 100 MiB free, of which 5 MiB stay free", "95 MiB for new volumes"}},
		// Sizes whose bytes overflow 64 bits: 2^44 MiB is 2^64 bytes,
		// which wraps to 0; two of 2^43 MiB wrap together.
		{[]NewImage{vol("huge", "/var/e", 1<<44)}, []string{"huge of 17592186044416 MiB does not fit"}},
		{[]NewImage{vol("huge", "/var/e", 1<<44+1)}, []string{"huge of 17592186044417 MiB does not fit"}},
		{[]NewImage{vol("a", "/var/e", 1<<43), vol("b", "/var/e", 1<<43)}, []string{"a of 8796093022208 MiB and b of 8796093022208 MiB"}},
		{[]NewImage{vol("max", "/var/e", math.MaxInt), vol("max2", "/var/e", math.MaxInt)}, []string{"max of 9223372036854775807 MiB and max2"}},
		// A negative size (no manifest gives one) fits nowhere.
		{[]NewImage{vol("negative", "/var/e", -(1 << 44))}, []string{"negative of -17592186044416 MiB does not fit"}},
	}
	for _, c := range refused {
		err := CheckSpace(fs.space, c.images)
		var serr *SpaceError
		if !errors.As(err, &serr) {
			t.Fatalf("%+v: %v, want a SpaceError", c.images, err)
		}
		for _, s := range c.names {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%q does not say %q", err, s)
			}
		}
	}
	// A full filesystem (less than the reserve free) takes nothing more.
	full := fakeSpace{"/": {Dev: 1, Avail: 4 << 20, Total: 100 << 20}}
	if err := CheckSpace(full.space, []NewImage{vol("a", "/v", 1)}); err == nil || !strings.Contains(err.Error(), "leaving 0 MiB") {
		t.Errorf("full disk: %v", err)
	}
	if err := CheckSpace(fakeSpace{}.space, []NewImage{vol("a", "/v", 1)}); err == nil || !strings.Contains(err.Error(), "a: free space: no filesystem") {
		t.Errorf("statfs failing: %v", err)
	}
}

// The images a boot creates or reuses count: ephemeral volumes, and
// persistent ones, marked when their image exists (it may still grow).
func TestNewVolumeImages(t *testing.T) {
	dir := t.TempDir()
	persistent := filepath.Join(dir, "volumes", "p")
	if err := os.MkdirAll(persistent, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(PersistentImage(persistent, "kept"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	vols := []Volume{
		{Mount: "/ro", Image: "/some.sqfs"},
		{Mount: "/ref", Ref: "abc"},
		{Mount: "/kept", Persistent: true, Name: "kept", SizeMiB: 100},
		{Mount: "/new", Persistent: true, Name: "new", SizeMiB: 200},
		{Mount: "/scratch", Ephemeral: true, SizeMiB: 300},
	}
	got := NewVolumeImages(persistent, "/eph", vols)
	want := []NewImage{
		{What: "persistent volumes[2] (/kept)", Dir: persistent, SizeMiB: 100, Path: PersistentImage(persistent, "kept"), Existing: true},
		{What: "persistent volumes[3] (/new)", Dir: persistent, SizeMiB: 200, Path: PersistentImage(persistent, "new")},
		{What: "ephemeral volumes[4] (/scratch)", Dir: "/eph", SizeMiB: 300},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got := NewVolumeImages("", "/eph", vols[2:4]); len(got) != 0 {
		t.Fatalf("no persistent directory: %+v", got)
	}
}

// StatSpace reports the filesystem of a directory not created yet.
func TestStatSpace(t *testing.T) {
	dir := t.TempDir()
	have, err := StatSpace(dir)
	if err != nil {
		t.Fatal(err)
	}
	later, err := StatSpace(filepath.Join(dir, "not", "yet"))
	if err != nil {
		t.Fatal(err)
	}
	if have.Dev != later.Dev || have.Total == 0 || have.Total != later.Total || have.Avail > have.Total {
		t.Fatalf("%s: %+v; below it: %+v", dir, have, later)
	}
}
