package qemu

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Packed code and data go to the VM as read-only drives init unpacks;
// volumes of each kind get a drive; ephemeral images are removed by
// release.
func TestStorageDrives(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 (e2fsprogs)")
	}
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(name), 0o644)
		return p
	}
	b := &Backend{opt: Options{StateDir: filepath.Join(dir, "state")}}
	v := &vm{log: slog.New(slog.DiscardHandler)}
	spec := backend.Spec{ProgramID: "p", CodePath: file("code.zip"), CodeEncoding: contract.EncodingZip,
		Data: &backend.Data{Path: file("data.sqfs"), Encoding: contract.EncodingSquashfs},
		Volumes: []backend.Volume{
			{Mount: "/opt/venv", Image: file("venv.sqfs")},
			{Mount: "/state", Persistent: true, Name: "state", SizeMiB: 8},
			{Mount: "/scratch", Ephemeral: true, SizeMiB: 8},
		}}
	drives, release, err := b.storage(context.Background(), spec, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(drives) != 5 {
		t.Fatalf("%d drives: %+v", len(drives), drives)
	}
	want := []drive{
		{file: spec.CodePath, serial: codeSerial, readOnly: true},
		{file: spec.Data.Path, serial: dataSerial, readOnly: true},
		{file: spec.Volumes[0].Image, serial: "ferry-vol0", readOnly: true},
		{file: filepath.Join(dir, "state", "volumes", "p", "state.ext4"), serial: "ferry-vol1"},
	}
	if !reflect.DeepEqual(drives[:4], want) {
		t.Fatalf("drives %+v\nwant %+v", drives[:4], want)
	}
	scratch := drives[4].file
	if _, err := os.Stat(scratch); err != nil || drives[4].readOnly {
		t.Fatalf("ephemeral drive %+v: %v", drives[4], err)
	}
	if v.guest.Code != (contract.Code{Encoding: contract.EncodingZip, Source: contract.Source{Device: "serial:" + codeSerial}}) {
		t.Fatalf("guest code %+v", v.guest.Code)
	}
	gv := v.guest.Volumes
	if len(gv) != 4 || gv[0] != (contract.Volume{Mount: "/data", Device: "serial:" + dataSerial, FS: "squashfs", ReadOnly: true}) ||
		gv[3] != (contract.Volume{Mount: "/scratch", Device: "serial:ferry-vol2", FS: "ext4"}) {
		t.Fatalf("guest volumes %+v", gv)
	}
	release()
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Fatalf("the ephemeral image outlived its VM: %v", err)
	}
	// A zip as data is extracted by init from its drive.
	v = &vm{log: slog.New(slog.DiscardHandler)}
	spec = backend.Spec{ProgramID: "p", Data: &backend.Data{Path: file("data.zip"), Encoding: contract.EncodingZip}}
	if _, _, err := b.storage(context.Background(), spec, v, nil); err != nil || v.guest.Data == nil || v.guest.Data.Device != "serial:"+dataSerial {
		t.Fatalf("zip data: %v %+v", err, v.guest.Data)
	}
}

// A boot whose new volumes and instance root do not fit on the disk is
// refused before anything is created; a persistent volume or root disk
// that exists already takes no new space.
func TestStartRefusesVolumesBeyondTheFreeSpace(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	state := filepath.Join(dir, "state")
	space := func(string) (backend.FSSpace, error) {
		return backend.FSSpace{Dev: 1, Avail: 1100 << 20, Total: 1 << 30}, nil // 51 MiB reserve: 1049 MiB for volumes
	}
	b := &Backend{opt: Options{Kernel: file("vmlinuz"), Rootfs: file("rootfs.squashfs"), StateDir: state, Space: space}}
	spec := backend.Spec{ProgramID: "p", Instance: true, RootSizeMiB: 512, Volumes: []backend.Volume{
		{Mount: "/state", Persistent: true, Name: "state", SizeMiB: 512},
		{Mount: "/scratch", Ephemeral: true, SizeMiB: 64},
	}}
	_, err := b.Start(context.Background(), spec)
	var serr *backend.SpaceError
	if !errors.As(err, &serr) || len(serr.Images) != 3 || !strings.Contains(err.Error(), "the disk that keeps the root of 512 MiB, persistent volumes[0] (/state) of 512 MiB and ephemeral volumes[1] (/scratch) of 64 MiB, 1088 MiB together, do not fit") {
		t.Fatalf("Start: %v", err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused boot created its state: %v", err)
	}
	// Once the root disk and the persistent volume exist, only the
	// ephemeral volume is new.
	for _, image := range []string{backend.PersistentImage(b.rootsDir(), "p"), backend.PersistentImage(b.volumeDir("p"), "state")} {
		os.MkdirAll(filepath.Dir(image), 0o700)
		if err := os.WriteFile(image, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.CheckSpace(spec); err != nil {
		t.Fatalf("with the persistent images made: %v", err)
	}
	spec.Volumes[1].SizeMiB = 1050
	if err := b.CheckSpace(spec); err == nil || !strings.HasPrefix(err.Error(), "ephemeral volumes[1] (/scratch) of 1050 MiB does not fit") {
		t.Fatalf("an ephemeral volume beyond the space: %v", err)
	}
}
