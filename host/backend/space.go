package backend

// Bounding the volumes a boot creates by the host's free disk space: a
// persistent or ephemeral volume is a sparse ext4 image, cheap to create
// whatever its size, that the program can then fill; one larger than what
// its filesystem has free would let the program fill the host's disk.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The reserve: what new volumes must leave free on their filesystem, so
// that a program filling its volumes does not leave the host (its logs,
// the agent's state, the store's cache) without space. It is
// ReservePercent of the filesystem's size, at most MaxReserve: 5% keeps a
// small disk usable, 1 GiB is plenty on a large one.
const (
	ReservePercent = 5
	MaxReserve     = 1 << 30
)

// Reserve returns the bytes kept free on a filesystem of total bytes.
func Reserve(total uint64) uint64 {
	return min(total*ReservePercent/100, MaxReserve) // no overflow below 3 EiB
}

// FSSpace is the space of the filesystem holding a directory.
type FSSpace struct {
	// Dev is the filesystem's device (st_dev): directories with the same
	// Dev share their free space.
	Dev uint64
	// Avail is the bytes the agent may still allocate there (statfs's
	// f_bavail blocks of f_bsize), Total its size (f_blocks).
	Avail, Total uint64
}

// SpaceFunc reports the space of the filesystem that holds dir, or would
// hold it once created (that of its nearest existing parent).
type SpaceFunc func(dir string) (FSSpace, error)

// StatSpace is the SpaceFunc of the host's filesystems, by statfs(2).
func StatSpace(dir string) (FSSpace, error) {
	for {
		var st unix.Stat_t
		err := unix.Stat(dir, &st)
		if errors.Is(err, unix.ENOENT) && filepath.Dir(dir) != dir {
			dir = filepath.Dir(dir)
			continue
		}
		if err != nil {
			return FSSpace{}, fmt.Errorf("stat %s: %w", dir, err)
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil {
			return FSSpace{}, fmt.Errorf("statfs %s: %w", dir, err)
		}
		return FSSpace{Dev: st.Dev, Avail: fs.Bavail * uint64(fs.Bsize), Total: fs.Blocks * uint64(fs.Bsize)}, nil
	}
}

// NewImage is an ext4 image a boot would create, or one it reuses that
// may still grow.
type NewImage struct {
	// What names it in errors: "volumes[1] (/state)", "the root disk".
	What string
	// Dir is the directory it is created in.
	Dir     string
	SizeMiB int
	// Path is the image's file when it is known before it is created (a
	// persistent volume, the root disk), "" for an ephemeral volume,
	// whose file gets a name of its own.
	Path string
	// Existing says the image is there already (a persistent volume
	// booted again): it takes the part of Path's size it has not written
	// yet, not SizeMiB.
	Existing bool
}

// NewVolumeImages lists the images that starting a program with vols
// would create (its ephemeral volumes, and the persistent ones whose image
// does not exist yet, in persistentDir: see PersistentImage; "": the
// backend refuses them) or reuse (an existing persistent volume, which
// may still grow to its full size).
func NewVolumeImages(persistentDir, ephemeralDir string, vols []Volume) []NewImage {
	var out []NewImage
	for i, v := range vols {
		what := fmt.Sprintf("volumes[%d] (%s)", i, v.Mount)
		switch {
		case v.Image != "" || v.Ref != "":
		case v.Persistent:
			if persistentDir == "" { // the backend keeps none, and refuses the volume
				continue
			}
			image := PersistentImage(persistentDir, v.Name)
			_, err := os.Stat(image)
			out = append(out, NewImage{What: "persistent " + what, Dir: persistentDir, SizeMiB: v.SizeMiB, Path: image, Existing: err == nil})
		case v.Ephemeral:
			out = append(out, NewImage{What: "ephemeral " + what, Dir: ephemeralDir, SizeMiB: v.SizeMiB})
		}
	}
	return out
}

// SpaceError refuses images that do not fit on their filesystem.
type SpaceError struct {
	// Images are the images on the filesystem short of space.
	Images []NewImage
	// Avail is the filesystem's free space, Reserve what must stay free,
	// Promised what the images of running VMs may still take of it
	// (SpaceLedger).
	Avail, Reserve, Promised uint64
}

func (e *SpaceError) Error() string {
	var names []string
	var need uint64
	for _, im := range e.Images {
		names = append(names, fmt.Sprintf("%s of %d MiB", im.What, im.SizeMiB))
		need = addMiB(need, im.SizeMiB)
	}
	what := names[0] + " does"
	if len(names) > 1 {
		what = fmt.Sprintf("%s and %s, %d MiB together, do", strings.Join(names[:len(names)-1], ", "), names[len(names)-1], need)
	}
	room := uint64(0)
	if e.Avail > e.Reserve {
		room = e.Avail - e.Reserve
	}
	promised := ""
	if e.Promised > 0 {
		promised = fmt.Sprintf(" and %d MiB are promised to the volumes of running VMs (their images are sparse: what they have not written yet)", ceilMiB(e.Promised))
		room -= min(room, e.Promised)
	}
	return fmt.Sprintf("%s not fit on the host's disk: the filesystem of %s has %d MiB free, of which %d MiB stay free (the reserve: %d%% of its size, at most %d MiB)%s, leaving %d MiB for new volumes",
		what, e.Images[0].Dir, e.Avail>>20, e.Reserve>>20, ReservePercent, MaxReserve>>20, promised, room>>20)
}

// CheckSpace refuses (with a *SpaceError) images that, together with the
// others on their filesystem, would leave less than the reserve free
// there. space nil is StatSpace. It knows only what statfs says: a
// backend that runs VMs checks through its SpaceLedger, which also counts
// what the images of the VMs it runs have not written yet.
func CheckSpace(space SpaceFunc, images []NewImage) error {
	_, err := checkSpace(space, images, nil)
	return err
}

// checkSpace is CheckSpace with what the images of running VMs may still
// take of each filesystem: promised (nil: nothing) reports it for a
// device, and whether it tracks the image with the given inode already
// (an existing image booted again is then not counted twice). It returns
// the devices of the images, in order.
func checkSpace(space SpaceFunc, images []NewImage, promised func(dev uint64, known fileID) (bytes uint64, tracked bool)) ([]uint64, error) {
	if space == nil {
		space = StatSpace
	}
	type fsNeed struct {
		fs     FSSpace
		images []NewImage
		mib    uint64
	}
	var order, devs []uint64
	byDev := map[uint64]*fsNeed{}
	for _, im := range images {
		fs, err := space(im.Dir)
		if err != nil {
			return nil, fmt.Errorf("%s: free space: %w", im.What, err)
		}
		devs = append(devs, fs.Dev)
		n := byDev[fs.Dev]
		if n == nil {
			n = &fsNeed{fs: fs}
			byDev[fs.Dev] = n
			order = append(order, fs.Dev)
		}
		if im.Existing {
			unwritten, id, err := unwrittenBytes(im.Path)
			switch {
			case errors.Is(err, unix.ENOENT):
				// Gone since it was listed: the boot makes it anew,
				// counted whole.
			case err != nil:
				return nil, fmt.Errorf("%s: %w", im.What, err)
			case unwritten == 0:
				continue // written whole: it takes nothing more
			default:
				if promised != nil {
					if _, tracked := promised(fs.Dev, id); tracked {
						continue // a running VM's: counted as promised
					}
				}
				im.What += " (the part of its image not written yet)"
				im.SizeMiB = int(min(ceilMiB(unwritten), math.MaxInt))
			}
		}
		n.images = append(n.images, im)
		n.mib = addMiB(n.mib, im.SizeMiB)
	}
	for _, dev := range order {
		n := byDev[dev]
		if len(n.images) == 0 {
			continue
		}
		reserve := Reserve(n.fs.Total)
		var owed uint64
		if promised != nil {
			owed, _ = promised(dev, fileID{})
		}
		if n.fs.Avail < reserve || owed > n.fs.Avail-reserve || n.mib > (n.fs.Avail-reserve-owed)>>20 {
			return nil, &SpaceError{Images: n.images, Avail: n.fs.Avail, Reserve: reserve, Promised: owed}
		}
	}
	return devs, nil
}

// ceilMiB is bytes in MiB, rounded up.
func ceilMiB(bytes uint64) uint64 {
	return bytes>>20 + min(bytes&(1<<20-1), 1)
}

// addMiB is total+size MiB, in MiB (a sum of sizes in bytes could wrap
// past 2^64 and let a huge volume pass as a small one), at most
// math.MaxUint64; a negative size, which no manifest gives, is that
// maximum too: it fits nowhere.
func addMiB(total uint64, size int) uint64 {
	if size < 0 || uint64(size) > math.MaxUint64-total {
		return math.MaxUint64
	}
	return total + uint64(size)
}

// SpaceChecker is implemented by backends that create volumes on the
// host's disk: CheckSpace refuses, with a *SpaceError, a spec whose
// volumes do not fit there beside what those of the backend's running VMs
// may still take (see SpaceLedger). Start checks as much itself, and
// claims the space; the agent asks earlier, when a program is deployed.
type SpaceChecker interface {
	CheckSpace(spec Spec) error
}
