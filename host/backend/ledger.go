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
	ledger   *SpaceLedger
	items    []claimed
	released bool
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

// open starts measuring the image at path by its descriptor, which goes on
// counting once the file is removed (the sandbox removes an ephemeral
// image once it is mounted), in place of the one it had. When it cannot
// be opened the image owes its whole size again.
func (c *claimed) open(path string) error {
	c.close()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return err
	}
	c.file, c.id = f, fileID{st.Dev, st.Ino}
	return nil
}

func (c *claimed) close() {
	if c.file != nil {
		c.file.Close()
		c.file, c.id = nil, fileID{}
	}
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
// until the claim's Release: a new image's whole size until Track names
// its file, then what the file has not written yet; an existing image's
// unwritten part from the start. Claim and Track are what keep two boots
// that start together from both taking the same free space.
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
			// Measured by its file, counted once however many claims
			// hold it (promised): a VM that is ending and the next boot
			// of its program may both hold the same volume for a moment.
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

// promised returns what the claims owe on device dev, each image counted
// once, and whether one of them holds the file known. The caller holds
// l.mu.
func (l *SpaceLedger) promised(dev uint64, known fileID) (bytes uint64, tracked bool) {
	counted := map[fileID]bool{}
	for c := range l.claims {
		for i := range c.items {
			item := &c.items[i]
			if item.file != nil {
				if known != (fileID{}) && item.id == known {
					tracked = true
				}
				if counted[item.id] {
					continue
				}
				counted[item.id] = true
			}
			if item.dev == dev {
				bytes += min(item.owes(), ^uint64(0)-bytes)
			}
		}
	}
	return bytes, tracked
}

// Track tells the claim that the image at path is created (or was found
// made): from now on it owes what the file has not written. path is
// matched with the claimed image of that path, else with the first
// ephemeral one not matched yet (a boot creates its images in the order it
// claimed them). An image whose file cannot be opened keeps owing its
// whole size. Track after Release does nothing.
func (c *SpaceClaim) Track(path string) error {
	if c == nil {
		return nil
	}
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	if c.released {
		return nil
	}
	match := -1
	for i := range c.items {
		if c.items[i].path == path {
			match = i
			break
		}
	}
	if match < 0 {
		for i := range c.items {
			if c.items[i].path == "" {
				match = i
				break
			}
		}
	}
	if match < 0 {
		return fmt.Errorf("space claim: no image claimed for %s", path)
	}
	item := &c.items[match]
	item.path = path // matched: never given to another image
	if err := item.open(path); err != nil {
		return fmt.Errorf("space claim: %w; the image keeps its whole size", err)
	}
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
	for i := range c.items {
		c.items[i].close()
	}
	c.items, c.released = nil, true
}
