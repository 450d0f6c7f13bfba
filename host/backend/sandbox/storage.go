package sandbox

// The code in a packed encoding, the data and the volumes of a sandbox.
// Images (squashfs code, data and immutable volumes; ext4 persistent and
// ephemeral volumes) are mounted by the agent through loop devices as
// detached mounts (host/backend/loopmount) that travel with the plan:
// nothing appears in the host's mount table, and the sandbox's guest,
// which has no device and may not mount block filesystems in its user
// namespace, finds them mounted. Zip archives are handed to init, which
// extracts them into a writable tmpfs (as it does in a VM).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/loopmount"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Where the guest finds the archives init extracts.
const (
	guestCodeZip = "/run/ferry/code.zip"
	guestDataZip = "/run/ferry/data.zip"
)

// reservedInView are the guest paths the stage builds itself: no data or
// volume may be mounted at or below them.
var reservedInView = []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/etc", "/root", contract.DefaultCodeDir}

// checkMountPoint refuses a mount point the sandbox cannot offer.
func checkMountPoint(target string) error {
	if !path.IsAbs(target) || path.Clean(target) != target || target == "/" {
		return fmt.Errorf("mount point %q is not a clean absolute path", target)
	}
	for _, r := range reservedInView {
		if target == r || strings.HasPrefix(target, r+"/") {
			return fmt.Errorf("mount point %s is in %s, which the sandbox provides itself", target, r)
		}
	}
	return nil
}

// codeFD returns the descriptor of the code's mount, setting the plan and
// the guest's view of it: a directory or one file (bound), a zip archive
// (bound as a file, extracted by init), or a squashfs image (mounted).
func (b *Backend) codeFD(spec backend.Spec, pid int, userNS bool, p *plan, g *backend.Guest) (int, error) {
	switch spec.CodeEncoding {
	case "":
		return codeMount(spec.CodePath, pid, userNS)
	case contract.EncodingZip:
		p.CodeZip, p.CodeFile = guestCodeZip, ""
		g.Code = contract.Code{Encoding: contract.EncodingZip, Source: contract.Source{Path: guestCodeZip}}
		return codeMount(spec.CodePath, pid, userNS)
	case contract.EncodingSquashfs:
		p.CodeFile = ""
		return imageMount(spec.CodePath, loopmount.Squashfs, true, pid, userNS)
	}
	return -1, fmt.Errorf("code encoding %q is not supported", spec.CodeEncoding)
}

// extras prepares the data's and the volumes' mounts: their plan entries
// and descriptors (closed by the caller), and the guest's view of the
// data. Ephemeral volumes' images are removed as soon as they are
// mounted: the loop device keeps them until the VM ends. The volumes it
// creates are tracked by claim.
func (b *Backend) extras(ctx context.Context, spec backend.Spec, pid int, userNS bool, p *plan, g *backend.Guest, claim *backend.SpaceClaim) (fds []int, err error) {
	add := func(target string, fd int, file bool) {
		e := extraMount{Target: target, FD: -1, File: file}
		if fd >= 0 {
			e.FD = len(fds)
			fds = append(fds, fd)
		}
		p.Extra = append(p.Extra, e)
	}
	if d := spec.Data; d != nil {
		switch d.Encoding {
		case contract.EncodingZip:
			fd, err := codeMount(d.Path, pid, userNS)
			if err != nil {
				return fds, fmt.Errorf("data %s: %w", d.Path, err)
			}
			add(guestDataZip, fd, true)
			add(backend.DataMount, -1, false) // a tmpfs init extracts into
			g.Data = &contract.Source{Path: guestDataZip}
		case contract.EncodingSquashfs:
			fd, err := imageMount(d.Path, loopmount.Squashfs, true, pid, userNS)
			if err != nil {
				return fds, fmt.Errorf("data %s: %w", d.Path, err)
			}
			add(backend.DataMount, fd, false)
		default:
			return fds, fmt.Errorf("data encoding %q is not zip or squashfs", d.Encoding)
		}
	}
	if len(spec.Volumes)+len(p.Extra) > maxExtraMounts {
		return fds, fmt.Errorf("%d volumes: the sandbox offers at most %d", len(spec.Volumes), maxExtraMounts-len(p.Extra))
	}
	for i, v := range spec.Volumes {
		field := fmt.Sprintf("volume %d (%s)", i, v.Mount)
		if err := checkMountPoint(v.Mount); err != nil {
			return fds, fmt.Errorf("%s: %w", field, err)
		}
		var fd int
		switch {
		case v.Image != "":
			fs, err := loopmount.Detect(v.Image)
			if err != nil {
				return fds, fmt.Errorf("%s: %w", field, err)
			}
			fd, err = imageMount(v.Image, fs, true, pid, userNS)
			if err != nil {
				return fds, fmt.Errorf("%s: %w", field, err)
			}
		case v.Persistent:
			if b.VolumeDir == "" {
				return fds, fmt.Errorf("%s: the sandbox has no directory for persistent volumes", field)
			}
			name := v.Name
			image, created, err := backend.PersistentVolume(ctx, path.Join(b.VolumeDir, spec.ProgramID), name, v.SizeMiB)
			if err != nil {
				return fds, fmt.Errorf("%s: %w", field, err)
			}
			if created {
				b.Log.Info("sandbox: created persistent volume", "program", spec.ProgramID, "volume", name, "image", image, "size_mib", v.SizeMiB)
			}
			b.track(claim, image)
			if fd, err = imageMount(image, loopmount.Ext4, false, pid, userNS); err != nil {
				return fds, fmt.Errorf("%s: %w", field, err)
			}
		case v.Ephemeral:
			if fd, err = b.ephemeral(ctx, v, pid, userNS, claim); err != nil {
				return fds, fmt.Errorf("%s: %w", field, err)
			}
		default:
			return fds, fmt.Errorf("%s is neither an image, persistent nor ephemeral", field)
		}
		add(v.Mount, fd, false)
	}
	return fds, nil
}

// ephemeralPrefix names the directories ephemeral images are made in,
// under VolumeDir; CleanStale removes what a crash left.
const ephemeralPrefix = ".ephemeral-"

// ephemeral makes a fresh ext4 image for one boot, tracked by claim,
// mounts it and removes the file at once (the loop device, and the
// claim, hold it until the VM ends).
func (b *Backend) ephemeral(ctx context.Context, v backend.Volume, pid int, userNS bool, claim *backend.SpaceClaim) (int, error) {
	dir := b.ephemeralDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return -1, err
	}
	tmp, err := os.MkdirTemp(dir, ephemeralPrefix)
	if err != nil {
		return -1, err
	}
	defer os.RemoveAll(tmp)
	image := path.Join(tmp, "scratch.ext4")
	if err := backend.MakeExt4(ctx, image, "scratch", v.SizeMiB); err != nil {
		return -1, err
	}
	b.track(claim, image)
	return imageMount(image, loopmount.Ext4, false, pid, userNS)
}

// ephemeralDir is where ephemeral images are made: VolumeDir, or the
// temporary directory without one.
func (b *Backend) ephemeralDir() string {
	if b.VolumeDir == "" {
		return os.TempDir()
	}
	return b.VolumeDir
}

// CheckSpace implements backend.SpaceChecker: the spec's new volumes must
// fit on the host's disk, beside what those of running VMs may still
// take (backend.SpaceLedger). The plain sandbox (not root) creates none.
func (b *Backend) CheckSpace(spec backend.Spec) error {
	if !b.Root {
		return nil
	}
	return b.ledger.Check(b.Space, b.volumeImages(spec))
}

// volumeImages lists the volume images a boot of spec creates or reuses.
func (b *Backend) volumeImages(spec backend.Spec) []backend.NewImage {
	persistent := ""
	if b.VolumeDir != "" {
		persistent = path.Join(b.VolumeDir, spec.ProgramID)
	}
	return backend.NewVolumeImages(persistent, b.ephemeralDir(), spec.Volumes)
}

// track tells claim that a volume's image is created. Should that fail,
// the image goes on counting its whole size, which is only stricter.
func (b *Backend) track(claim *backend.SpaceClaim, image string) {
	if err := claim.Track(image); err != nil {
		b.Log.Warn("sandbox: measuring a volume's space", "err", err)
	}
}

// imageMount mounts an image as a detached mount, nosuid and nodev,
// id-mapped into the sandbox's user namespace when it has one: its root
// is the guest's root. A writable filesystem that cannot be id-mapped is
// an error (the guest could not write it); a read-only one is then seen
// with the permissions "others" have.
func imageMount(image, fstype string, readOnly bool, pid int, userNS bool) (int, error) {
	fd, err := loopmount.Mount(image, fstype, readOnly)
	if err != nil {
		return -1, err
	}
	if !userNS {
		return fd, nil
	}
	if err := idmap(fd, pid); err != nil {
		if !readOnly {
			unix.Close(fd)
			return -1, fmt.Errorf("id-mapping %s for the guest: %w", image, err)
		}
	}
	return fd, nil
}

// idmap maps a detached mount's ids into the user namespace of process
// pid.
func idmap(fd, pid int) error {
	userns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(userns)
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}
	return unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr)
}

// errNoRoot is the error of storage the plain (not root) sandbox cannot
// offer.
var errNoRoot = errors.New("needs the agent to run as root (the sandbox without namespaces offers only code as a directory or one file)")
