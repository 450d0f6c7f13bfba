package backend

// The space promised to the volume images of running VMs. An image is a
// sparse file: statfs counts only the blocks it has written, so a check
// by free space alone lets two boots each take what is free (a 15 GiB
// volume passes on a disk with 19 GiB free, and so does the next one),
// and their programs can then fill the host's disk together. A backend
// keeps a SpaceLedger: each boot claims its images' full size before
// creating them, and the claim counts, until the VM ends, what the images
// have not written yet.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// fileID names a file by device and inode.
type fileID struct{ dev, ino uint64 }

// unwrittenBytes returns the part of the file at path its blocks do not
// cover yet (its size less what it has allocated; 0 when it has allocated
// more, as ext4's metadata can), and the file's id.
func unwrittenBytes(path string) (uint64, fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fileID{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return unwritten(&st), fileID{st.Dev, st.Ino}, nil
}

// mibBytes is size MiB in bytes, at most math.MaxUint64 (which no
// filesystem has free); a negative size is that maximum too.
func mibBytes(size int) uint64 {
	mib := addMiB(0, size)
	if mib > math.MaxUint64>>20 {
		return math.MaxUint64
	}
	return mib << 20
}

func unwritten(st *unix.Stat_t) uint64 {
	size, allocated := uint64(max(st.Size, 0)), uint64(max(st.Blocks, 0))*512
	return size - min(size, allocated)
}

// SpaceLedger keeps the space the volume images of one backend's running
// VMs may still take: what a claimed image has not written yet, or its
// whole size until it is created. Its zero value is ready; it is safe for
// concurrent use.
type SpaceLedger struct {
	mu     sync.Mutex
	claims map[*SpaceClaim]struct{}
}

// SpaceClaim is the space one boot holds in a SpaceLedger, from its check
// until Release.
type SpaceClaim struct {
	ledger *SpaceLedger
	items  []claimed
}

// claimed is one image of a claim.
type claimed struct {
	dev  uint64
	path string // "" for an ephemeral image, until Track
	size uint64 // bytes owed until file is set
	file *os.File
	id   fileID
}

// owes returns what c may still take of its filesystem.
func (c *claimed) owes() uint64 {
	if c.file == nil {
		return c.size
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(c.file.Fd()), &st); err != nil {
		return c.size
	}
	return unwritten(&st)
}

// Check is CheckSpace counting, on each filesystem, what the images of
// the ledger's claims have not written yet.
func (l *SpaceLedger) Check(space SpaceFunc, images []NewImage) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := checkSpace(space, images, l.promised)
	return err
}

// Claim checks images as Check does and, when they fit, holds their space
// until the claim's Release: their whole size until Track names their
// files, then what these have not written yet. Claim and Track are what
// keep two boots that start together from both taking the same free
// space.
func (l *SpaceLedger) Claim(space SpaceFunc, images []NewImage) (*SpaceClaim, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	devs, err := checkSpace(space, images, l.promised)
	if err != nil {
		return nil, err
	}
	c := &SpaceClaim{ledger: l}
	for i, im := range images {
		item := claimed{dev: devs[i], path: im.Path, size: mibBytes(im.SizeMiB)}
		if im.Existing {
			if _, tracked := l.promised(devs[i], l.idOf(im.Path)); tracked {
				continue
			}
			item.open(im.Path)
		}
		c.items = append(c.items, item)
	}
	if l.claims == nil {
		l.claims = map[*SpaceClaim]struct{}{}
	}
	l.claims[c] = struct{}{}
	return c, nil
}

// idOf returns the id of the file at path, the zero id when it cannot be
// read.
func (l *SpaceLedger) idOf(path string) fileID {
	_, id, err := unwrittenBytes(path)
	if err != nil {
		return fileID{}
	}
	return id
}

// open starts measuring the image at path by its descriptor, which goes on
// counting once the file is removed (the sandbox removes an ephemeral
// image once it is mounted). When it cannot be opened the image keeps
// owing its whole size.
func (c *claimed) open(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return
	}
	c.file, c.id = f, fileID{st.Dev, st.Ino}
}

// promised returns what the claims owe on device dev, and whether one
// of them tracks the file known. The caller holds l.mu.
func (l *SpaceLedger) promised(dev uint64, known fileID) (bytes uint64, tracked bool) {
	for c := range l.claims {
		for i := range c.items {
			item := &c.items[i]
			if item.file != nil && known != (fileID{}) && item.id == known {
				tracked = true
			}
			if item.dev == dev {
				bytes += min(item.owes(), ^uint64(0)-bytes)
			}
		}
	}
	return bytes, tracked
}

// Track tells the claim that the image at path is created: from now on it
// owes what the file has not written. path is matched with the claimed
// image of that path, else with the first ephemeral one not tracked yet
// (a boot creates its images in the order it claimed them).
func (c *SpaceClaim) Track(path string) error {
	if c == nil {
		return nil
	}
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	match := -1
	for i := range c.items {
		item := &c.items[i]
		if item.file != nil {
			continue
		}
		if item.path == path {
			match = i
			break
		}
		if item.path == "" && match < 0 {
			match = i
		}
	}
	if match < 0 {
		return fmt.Errorf("space claim: no image claimed for %s", path)
	}
	item := &c.items[match]
	item.open(path)
	if item.file == nil {
		return errors.New("space claim: " + path + " could not be opened; it keeps its whole size")
	}
	item.path = path
	return nil
}

// Release gives the claim's space back, once its VM has ended (or its
// boot failed). It may be called more than once, and on nil.
func (c *SpaceClaim) Release() {
	if c == nil {
		return
	}
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	delete(c.ledger.claims, c)
	for _, item := range c.items {
		if item.file != nil {
			item.file.Close()
		}
	}
	c.items = nil
}
