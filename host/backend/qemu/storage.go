package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// BootsRootImages implements backend.RootImages: a program's runtime is
// the VM's root image.
func (b *Backend) BootsRootImages() bool { return true }

// dataSerial is the serial of the data's drive.
const dataSerial = "ferry-data"

// storage returns the drives of the program's code, data and volumes,
// and sets where the guest finds them (v.guest). Packed code and data go
// to the VM as they are, read-only: init mounts a squashfs image and
// extracts a zip archive (a raw drive: its size rounded up to a sector
// with zeros, which a zip reader skips). release removes the boot's
// ephemeral volumes and gives claim's space back; call it once the VM has
// ended (it is called here on error). The volumes it creates are tracked
// by claim.
func (b *Backend) storage(ctx context.Context, spec backend.Spec, v *vm, claim *backend.SpaceClaim) (drives []drive, release func(), err error) {
	var ephemeral []string
	release = func() {
		claim.Release()
		for _, image := range ephemeral {
			os.Remove(image)
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	codeDevice := contract.Source{Device: "serial:" + codeSerial}
	switch spec.CodeEncoding {
	case "":
		// Packed once per content: a directory's tree, or a single file
		// under its name in the guest.
		if spec.CodePath != "" {
			single, err := spec.SingleFile()
			if err != nil {
				return nil, release, err
			}
			name := ""
			if single {
				name = spec.CodeFile
			}
			image, err := codeImage(ctx, filepath.Join(b.opt.StateDir, "code"), spec.CodePath, name)
			if err != nil {
				return nil, release, err
			}
			drives = append(drives, drive{file: image, serial: codeSerial, readOnly: true})
			v.guest.Code = contract.Code{Encoding: contract.EncodingSquashfs, Source: codeDevice}
		}
	case contract.EncodingSquashfs, contract.EncodingZip:
		if err := checkFile("code", spec.CodePath); err != nil {
			return nil, release, err
		}
		drives = append(drives, drive{file: spec.CodePath, serial: codeSerial, readOnly: true})
		v.guest.Code = contract.Code{Encoding: spec.CodeEncoding, Source: codeDevice}
	default:
		return nil, release, fmt.Errorf("code encoding %q is not supported", spec.CodeEncoding)
	}
	if d := spec.Data; d != nil {
		if err := checkFile("data", d.Path); err != nil {
			return nil, release, err
		}
		drives = append(drives, drive{file: d.Path, serial: dataSerial, readOnly: true})
		switch d.Encoding {
		case contract.EncodingZip:
			v.guest.Data = &contract.Source{Device: "serial:" + dataSerial}
		case contract.EncodingSquashfs:
			v.guest.Volumes = append(v.guest.Volumes, contract.Volume{Mount: backend.DataMount, Device: "serial:" + dataSerial, FS: "squashfs", ReadOnly: true})
		default:
			return nil, release, fmt.Errorf("data encoding %q is not zip or squashfs", d.Encoding)
		}
	}
	for i, vol := range spec.Volumes {
		serial := fmt.Sprintf("ferry-vol%d", i)
		gv := contract.Volume{Mount: vol.Mount, Device: "serial:" + serial}
		switch {
		case vol.Image != "":
			if err := checkFile(fmt.Sprintf("volume %d image", i), vol.Image); err != nil {
				return nil, release, err
			}
			drives = append(drives, drive{file: vol.Image, serial: serial, readOnly: true})
			gv.ReadOnly = true
		case vol.Persistent:
			name := vol.Name
			image, created, err := persistentVolume(ctx, b.volumeDir(spec.ProgramID), name, vol.SizeMiB)
			if err != nil {
				return nil, release, err
			}
			if created {
				v.log.Info("created persistent volume", "volume", name, "image", image, "size_mib", vol.SizeMiB)
			}
			track(claim, image, v.log)
			drives = append(drives, drive{file: image, serial: serial})
			gv.FS = "ext4"
		case vol.Ephemeral:
			dir := b.ephemeralDir()
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, release, err
			}
			f, err := os.CreateTemp(dir, spec.ProgramID+"-*.ext4")
			if err != nil {
				return nil, release, err
			}
			f.Close()
			ephemeral = append(ephemeral, f.Name())
			if err := backend.MakeExt4(ctx, f.Name(), "scratch", vol.SizeMiB); err != nil {
				return nil, release, err
			}
			track(claim, f.Name(), v.log)
			drives = append(drives, drive{file: f.Name(), serial: serial})
			gv.FS = "ext4"
		default:
			return nil, release, fmt.Errorf("volume %d (%s) is neither an image, persistent nor ephemeral", i, vol.Mount)
		}
		v.guest.Volumes = append(v.guest.Volumes, gv)
	}
	return drives, release, nil
}

// Where the backend keeps a program's persistent volumes, the boots'
// ephemeral volumes and the instances' persistent roots.
func (b *Backend) volumeDir(programID string) string {
	return filepath.Join(b.opt.StateDir, "volumes", programID)
}
func (b *Backend) ephemeralDir() string { return filepath.Join(b.opt.StateDir, "ephemeral") }
func (b *Backend) rootsDir() string     { return filepath.Join(b.opt.StateDir, "roots") }

// CheckSpace implements backend.SpaceChecker: the spec's new volumes and,
// for an instance, the disk that keeps its root must fit on the host's
// disk, beside what the disks of running VMs may still take
// (backend.SpaceLedger).
func (b *Backend) CheckSpace(spec backend.Spec) error {
	return b.ledger.Check(b.opt.Space, b.images(spec))
}

// images lists the disk images a boot of spec creates or reuses, in the
// order it creates them: the root's disk, then the volumes.
func (b *Backend) images(spec backend.Spec) []backend.NewImage {
	var images []backend.NewImage
	if spec.RootSizeMiB > 0 {
		image := backend.PersistentImage(b.rootsDir(), spec.ProgramID)
		_, err := os.Stat(image)
		images = append(images, backend.NewImage{What: "the disk that keeps the root", Dir: b.rootsDir(), SizeMiB: spec.RootSizeMiB, Path: image, Existing: err == nil})
	}
	return append(images, backend.NewVolumeImages(b.volumeDir(spec.ProgramID), b.ephemeralDir(), spec.Volumes)...)
}

// track tells claim that a disk image is created. Should that fail, the
// image goes on counting its whole size, which is only stricter.
func track(claim *backend.SpaceClaim, image string, log *slog.Logger) {
	if err := claim.Track(image); err != nil {
		log.Warn("qemu: measuring a disk's space", "err", err)
	}
}
