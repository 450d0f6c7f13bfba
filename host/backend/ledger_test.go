package backend

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// sparseImage makes a sparse file of sizeMiB at path with written MiB of
// data at its start, as a volume image a program has begun to fill.
func sparseImage(t *testing.T, path string, sizeMiB, written int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, written<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// A claim holds its images' whole size until they are created, then what
// they have not written; a boot that would take what is promised is
// refused and says so; the space comes back with Release.
func TestSpaceLedgerClaims(t *testing.T) {
	fs := fakeSpace{"/": {Dev: 1, Avail: 10 * gib, Total: 100 * gib}} // 9 GiB for volumes
	vol := func(what string, mib int) NewImage { return NewImage{What: what, Dir: "/v", SizeMiB: mib} }
	var l SpaceLedger
	first, err := l.Claim(fs.space, []NewImage{vol("a", 6<<10)})
	if err != nil {
		t.Fatal(err)
	}
	// statfs alone would let a second 6 GiB volume through.
	if err := CheckSpace(fs.space, []NewImage{vol("b", 6<<10)}); err != nil {
		t.Fatalf("CheckSpace, which knows no claims: %v", err)
	}
	_, err = l.Claim(fs.space, []NewImage{vol("b", 6<<10)})
	var serr *SpaceError
	if !errors.As(err, &serr) || serr.Promised != 6*gib {
		t.Fatalf("a second 6 GiB volume: %v, want a SpaceError with 6 GiB promised", err)
	}
	for _, s := range []string{"b of 6144 MiB does not fit", "6144 MiB are promised to the volumes of running VMs", "leaving 3072 MiB for new volumes"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q does not say %q", err, s)
		}
	}
	if err := l.Check(fs.space, []NewImage{vol("b", 3<<10)}); err != nil {
		t.Errorf("what is left: %v", err)
	}

	// Created, the image owes what it has not written: here 4 MiB less.
	image := filepath.Join(t.TempDir(), "a.ext4")
	sparseImage(t, image, 6<<10, 4)
	if err := first.Track(image); err != nil {
		t.Fatal(err)
	}
	if err := l.Check(fs.space, []NewImage{vol("b", 3<<10+4)}); err != nil {
		t.Errorf("after 4 MiB written: %v", err)
	}
	if err := l.Check(fs.space, []NewImage{vol("b", 3<<10+5)}); err == nil {
		t.Errorf("after 4 MiB written, 5 MiB more fit")
	}
	// The file removed (the sandbox removes an ephemeral image once it
	// is mounted), its descriptor still measures it.
	if err := os.Remove(image); err != nil {
		t.Fatal(err)
	}
	if err := l.Check(fs.space, []NewImage{vol("b", 3<<10+5)}); err == nil {
		t.Errorf("once the image is removed, its promise is forgotten")
	}
	if err := first.Track(image); err == nil {
		t.Errorf("a second image tracked by a claim of one")
	}

	first.Release()
	first.Release()
	if err := l.Check(fs.space, []NewImage{vol("b", 9<<10)}); err != nil {
		t.Errorf("after Release: %v", err)
	}
}

// An existing image booted again takes what it has not written; the
// image of a running VM is counted once, however many checks name it.
func TestSpaceLedgerExistingImages(t *testing.T) {
	fs := fakeSpace{"/": {Dev: 1, Avail: 10 * gib, Total: 100 * gib}}
	image := filepath.Join(t.TempDir(), "state.ext4")
	sparseImage(t, image, 8<<10, 2)
	kept := NewImage{What: "persistent volumes[0] (/state)", Dir: "/v", SizeMiB: 100, Path: image, Existing: true}
	err := CheckSpace(fs.space, []NewImage{kept, {What: "scratch", Dir: "/v", SizeMiB: 2 << 10}})
	if err == nil || !strings.Contains(err.Error(), "persistent volumes[0] (/state) (the part of its image not written yet) of 8190 MiB and scratch") {
		t.Fatalf("an existing 8 GiB image with 2 MiB written, and 2 GiB more: %v", err)
	}
	var l SpaceLedger
	c, err := l.Claim(fs.space, []NewImage{kept})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if err := l.Check(fs.space, []NewImage{kept}); err != nil {
		t.Errorf("the running VM's own image counted twice: %v", err)
	}
	if err := l.Check(fs.space, []NewImage{{What: "scratch", Dir: "/v", SizeMiB: 1 << 10}}); err != nil {
		t.Errorf("1 GiB beside the running image: %v", err)
	}
	if err := l.Check(fs.space, []NewImage{{What: "scratch", Dir: "/v", SizeMiB: 2 << 10}}); err == nil {
		t.Errorf("2 GiB beside the running image fit")
	}
	// An image gone since it was listed is made anew: its whole size.
	missing := kept
	missing.Path, missing.SizeMiB = filepath.Join(t.TempDir(), "gone.ext4"), 1<<10
	if err := l.Check(fs.space, []NewImage{missing}); err != nil {
		t.Errorf("an existing image of 1 GiB that is gone: %v", err)
	}
	missing.SizeMiB = 2 << 10
	if err := l.Check(fs.space, []NewImage{missing}); err == nil {
		t.Errorf("an existing image of 2 GiB that is gone fit beside the running one")
	}
}

// An image two claims hold (a VM that is ending and the next boot of its
// program) is counted once, and still once the first claim is released.
func TestSpaceLedgerImageHeldTwice(t *testing.T) {
	fs := fakeSpace{"/": {Dev: 1, Avail: 10 * gib, Total: 100 * gib}} // 9 GiB for volumes
	image := filepath.Join(t.TempDir(), "state.ext4")
	sparseImage(t, image, 8<<10, 1)
	kept := NewImage{What: "state", Dir: "/v", SizeMiB: 8 << 10, Path: image, Existing: true}
	var l SpaceLedger
	ending, err := l.Claim(fs.space, []NewImage{kept})
	if err != nil {
		t.Fatal(err)
	}
	next, err := l.Claim(fs.space, []NewImage{kept})
	if err != nil {
		t.Fatalf("the next boot of the image's program: %v", err)
	}
	defer next.Release()
	if err := l.Check(fs.space, []NewImage{{What: "other", Dir: "/v", SizeMiB: 1 << 10}}); err != nil {
		t.Errorf("the image counted twice: %v", err)
	}
	ending.Release()
	if err := l.Check(fs.space, []NewImage{{What: "other", Dir: "/v", SizeMiB: 2 << 10}}); err == nil {
		t.Errorf("once the ending VM's claim is released, the next boot's image is not counted")
	}
}

// Track gives each image its own item: an image whose file cannot be
// opened keeps its whole size and is not matched again; a persistent
// image tracked twice stays its own.
func TestSpaceLedgerTrackMatching(t *testing.T) {
	fs := fakeSpace{"/": {Dev: 1, Avail: 10 * gib, Total: 100 * gib}}
	dir := t.TempDir()
	persistent := filepath.Join(dir, "state.ext4")
	var l SpaceLedger
	c, err := l.Claim(fs.space, []NewImage{
		{What: "state", Dir: "/v", SizeMiB: 1 << 10, Path: persistent},
		{What: "big", Dir: "/v", SizeMiB: 6 << 10},
		{What: "small", Dir: "/v", SizeMiB: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	sparseImage(t, persistent, 1<<10, 0)
	for range 2 {
		if err := c.Track(persistent); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Track(filepath.Join(dir, "not-there.ext4")); err == nil {
		t.Fatal("tracking a file that is not there")
	}
	small := filepath.Join(dir, "small.ext4")
	sparseImage(t, small, 1, 1)
	if err := c.Track(small); err != nil {
		t.Fatal(err)
	}
	// Promised: 1 GiB (state, sparse), 6 GiB (big, not measured), 0
	// (small, written whole): 2 GiB left.
	if err := l.Check(fs.space, []NewImage{{What: "b", Dir: "/v", SizeMiB: 2 << 10}}); err != nil {
		t.Errorf("2 GiB beside the claim: %v", err)
	}
	if err := l.Check(fs.space, []NewImage{{What: "b", Dir: "/v", SizeMiB: 2<<10 + 1}}); err == nil {
		t.Errorf("more than 2 GiB fit beside the claim: the image not opened lost its size")
	}
	c.Release()
	if err := c.Track(small); err != nil {
		t.Errorf("Track after Release: %v", err)
	}
}

// Boots that start together cannot take the same free space: of 20
// claims of 1 GiB with 9 GiB for volumes, 9 pass.
func TestSpaceLedgerConcurrentClaims(t *testing.T) {
	fs := fakeSpace{"/": {Dev: 1, Avail: 10 * gib, Total: 100 * gib}}
	var l SpaceLedger
	var wg sync.WaitGroup
	var mu sync.Mutex
	var passed []*SpaceClaim
	for range 20 {
		wg.Go(func() {
			c, err := l.Claim(fs.space, []NewImage{{What: "v", Dir: "/v", SizeMiB: 1 << 10}})
			if err != nil {
				return
			}
			mu.Lock()
			passed = append(passed, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(passed) != 9 {
		t.Fatalf("%d claims of 1 GiB passed on 9 GiB", len(passed))
	}
	for _, c := range passed {
		c.Release()
	}
	if len(l.claims) != 0 {
		t.Fatalf("%d claims left after Release", len(l.claims))
	}
}
