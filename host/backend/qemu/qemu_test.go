package qemu

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/protocol/contract"
)

func TestArgsAttachDrivesTransportAndNetwork(t *testing.T) {
	b := &Backend{opt: Options{Initrd: "/img/initrd.img"}, tscKHz: 2596136}
	drives := []drive{
		{file: "/img/rootfs.squashfs", serial: rootSerial, readOnly: true},
		{file: "/state/a,b.ext4", serial: "ferry-vol0"},
	}
	tr := &serialTransport{sock: "/var/lib/ferry/qemu/run/1-1.sock"}
	args := strings.Join(b.args(backend.Spec{VCPUs: 2, MemoryMiB: 256}, 7, "/img/vmlinuz", contract.BootParams{Overlay: true}, drives, tr, true), " ")
	for _, want := range []string{
		"-M microvm -accel tcg -cpu max -smp 2 -m 256",
		"-no-reboot -kernel /img/vmlinuz -initrd /img/initrd.img",
		"-drive id=drive0,file=/img/rootfs.squashfs,format=raw,if=none,cache=none,aio=threads,read-only=on -device virtio-blk-device,drive=drive0,serial=ferry-root",
		// Commas in paths are doubled; a persistent volume is writable.
		"-drive id=drive1,file=/state/a,,b.ext4,format=raw,if=none,cache=none,aio=threads -device virtio-blk-device,drive=drive1,serial=ferry-vol0",
		"-chardev socket,id=ferry,path=/var/lib/ferry/qemu/run/1-1.sock -device virtserialport,chardev=ferry,name=ferry",
		"-netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac=52:54:00:00:00:07",
		"ferry.overlay=1 ferry.transport=serial:ferry", "tsc_early_khz=2596136 tsc=reliable",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	// With KVM: the host CPU, no TSC hints; vsock instead of the serial port.
	b.kvm = true
	args = strings.Join(b.args(backend.Spec{}, 1, "/k", contract.BootParams{}, drives[:1], &vsockTransport{cid: 42}, false), " ")
	for _, want := range []string{"-accel kvm -cpu host -smp 1 -m 512", "-device vhost-vsock-device,guest-cid=42", "ferry.transport=vsock:52"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	for _, unwanted := range []string{"tsc_early_khz", "netdev", "virtserialport"} {
		if strings.Contains(args, unwanted) {
			t.Errorf("args have %q:\n%s", unwanted, args)
		}
	}
}

func TestVsockCIDsAreValidAndDistinct(t *testing.T) {
	seen := map[uint32]bool{}
	for i := uint64(1); i < 100; i++ {
		cid := vsockCID(i)
		if cid < 3 || seen[cid] {
			t.Fatalf("index %d: cid %d", i, cid)
		}
		seen[cid] = true
	}
}

func TestNewRefusesMissingFiles(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("needs qemu-system-x86_64 (installed by .ci/run)")
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(dir, "initrd.img"), []byte("i"), 0o644)
	_, err := New(Options{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"), Rootfs: filepath.Join(dir, "rootfs.squashfs"), Accel: "tcg", Transport: "serial"})
	if err == nil || !strings.Contains(err.Error(), "root image: stat") || !strings.Contains(err.Error(), "make rootfs") {
		t.Fatalf("missing root image: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "rootfs.squashfs"), []byte("r"), 0o644)
	if _, err := New(Options{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"), Rootfs: filepath.Join(dir, "rootfs.squashfs"), Accel: "warp"}); err == nil {
		t.Fatal("unknown accelerator accepted")
	}
}

func TestPersistentVolumeIsCreatedOnceAndKept(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 (e2fsprogs)")
	}
	dir := t.TempDir()
	image, created, err := persistentVolume(context.Background(), dir, "state", 8)
	if err != nil || !created {
		t.Fatalf("first use: %v created=%v", err, created)
	}
	if st, _ := os.Stat(image); st.Size() != 8<<20 {
		t.Fatalf("size %d", st.Size())
	}
	if out, err := exec.Command("e2fsck", "-fn", image).CombinedOutput(); err != nil {
		t.Fatalf("not a clean ext4: %v\n%s", err, out)
	}
	// Data written since must survive: the image is not remade.
	before, _ := os.Stat(image)
	again, created, err := persistentVolume(context.Background(), dir, "state", 16)
	after, _ := os.Stat(again)
	if err != nil || created || again != image || !os.SameFile(before, after) || after.Size() != 8<<20 {
		t.Fatalf("second use: %v created=%v", err, created)
	}
}

func TestCodeImageIsPackedOncePerContent(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("needs mksquashfs (squashfs-tools)")
	}
	code, cache := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(code, "main.py"), []byte("app = None\n"), 0o644)
	first, err := codeImage(context.Background(), cache, code, "")
	if err != nil {
		t.Fatal(err)
	}
	again, err := codeImage(context.Background(), cache, code, "")
	if err != nil || again != first {
		t.Fatalf("unchanged code packed again: %s %s %v", first, again, err)
	}
	later := time.Now().Add(time.Second)
	os.WriteFile(filepath.Join(code, "main.py"), []byte("app = 1\n"), 0o644)
	os.Chtimes(filepath.Join(code, "main.py"), later, later)
	changed, err := codeImage(context.Background(), cache, code, "")
	if err != nil || changed == first {
		t.Fatalf("changed code not repacked: %s %v", changed, err)
	}
	if out, err := exec.Command("unsquashfs", "-l", changed).CombinedOutput(); err != nil || !strings.Contains(string(out), "main.py") {
		t.Fatalf("image content: %v\n%s", err, out)
	}
}

// A single file is packed alone, under the name the guest needs, with a
// root directory the guest can enter; the same file under another name is
// another image.
func TestCodeImageOfASingleFile(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("needs mksquashfs (squashfs-tools)")
	}
	dir, cache := t.TempDir(), t.TempDir()
	src := filepath.Join(dir, "app-source.py")
	os.WriteFile(src, []byte("app = None\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "neighbour.py"), []byte("secret = 1\n"), 0o600)
	image, err := codeImage(context.Background(), cache, src, "main.py")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("unsquashfs", "-ll", image).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var entries []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) >= 6 && strings.HasPrefix(f[len(f)-1], "squashfs-root") {
			entries = append(entries, f[0]+" "+f[len(f)-1])
		}
	}
	want := []string{"drwxr-xr-x squashfs-root", "-rw------- squashfs-root/main.py"}
	if strings.Join(entries, ",") != strings.Join(want, ",") {
		t.Fatalf("image holds %q, want %q", entries, want)
	}
	nested, err := codeImage(context.Background(), cache, src, "pkg/web.py")
	if err != nil || nested == image {
		t.Fatalf("the same file under another name: %s %v", nested, err)
	}
	if out, err := exec.Command("unsquashfs", "-l", nested).CombinedOutput(); err != nil || !strings.Contains(string(out), "squashfs-root/pkg/web.py") {
		t.Fatalf("nested name: %v\n%s", err, out)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(cache, "*.tree")); len(leftovers) != 0 {
		t.Fatalf("staging directories left behind: %v", leftovers)
	}
}

// The kernel command line: the kernel's words, then init's parameters as
// contract.BootParams renders them, then the TSC hint under TCG.
func TestKernelCmdline(t *testing.T) {
	b := &Backend{tscKHz: 2596136}
	params := contract.BootParams{Root: "serial:" + rootSerial, RootFS: "squashfs", Overlay: true, Transport: (&serialTransport{}).guestTransport(), OnExit: contract.ActionReboot}
	got := b.KernelCmdline(params)
	want := "console=ttyS0 quiet reboot=t panic=-1 pci=off ferry.root=serial:ferry-root ferry.rootfstype=squashfs ferry.overlay=1 " +
		"ferry.transport=serial:ferry ferry.shutdown=reboot tsc_early_khz=2596136 tsc=reliable"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// The root: the backend's squashfs read-only, made an overlay by init;
// another image is squashfs or ext4, init tries each; a persistent root
// adds a disk of the program's, created once and kept, for the overlay's
// writable layer.
func TestRootDrives(t *testing.T) {
	b := &Backend{opt: Options{Rootfs: "/img/rootfs.squashfs", StateDir: t.TempDir()}}
	log := slog.New(slog.DiscardHandler)
	drives, boot, err := b.root(context.Background(), backend.Spec{ProgramID: "p"}, "/img/rootfs.squashfs", log, nil)
	if err != nil || len(drives) != 1 || !drives[0].readOnly || boot.RootFS != "squashfs" || !boot.Overlay || boot.Upper != "" {
		t.Fatalf("the default root: %+v %+v %v", drives, boot, err)
	}
	if _, boot, _ := b.root(context.Background(), backend.Spec{ProgramID: "p"}, "/mine/root.ext4", log, nil); boot.RootFS != "" {
		t.Fatalf("another image's filesystem is not left to init: %+v", boot)
	}

	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
	}
	drives, boot, err = b.root(context.Background(), backend.Spec{ProgramID: "box", RootSizeMiB: 16}, "/img/rootfs.squashfs", log, nil)
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(b.opt.StateDir, "roots", "box.ext4")
	if len(drives) != 2 || drives[1] != (drive{file: disk, serial: upperSerial}) || boot.Upper != "serial:"+upperSerial || !boot.Overlay {
		t.Fatalf("a persistent root: %+v %+v", drives, boot)
	}
	// Kept: the next boot finds the same disk with what was written.
	mark := []byte("written in boot 1")
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(mark, 100<<20/8) // past the superblocks, inside the 16 MiB
	f.Close()
	if _, _, err := b.root(context.Background(), backend.Spec{ProgramID: "box", RootSizeMiB: 16}, "/img/rootfs.squashfs", log, nil); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(mark))
	f, _ = os.Open(disk)
	f.ReadAt(got, 100<<20/8)
	f.Close()
	if string(got) != string(mark) {
		t.Fatal("the disk keeping the root was made again at the second boot")
	}
}

// A VM's transport socket lives in the run directory (the state
// directory's by default, so nothing is left elsewhere) and is gone when
// the transport closes; a path no unix socket address holds is refused
// with a reason instead of failing in bind.
func TestSerialTransportSocket(t *testing.T) {
	runDir := filepath.Join(t.TempDir(), "run")
	tr, err := newSerialTransport(runDir, 3)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(tr.sock) != runDir {
		t.Fatalf("socket %s outside %s", tr.sock, runDir)
	}
	if fi, err := os.Stat(tr.sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no socket at %s: %v", tr.sock, err)
	}
	tr.close()
	if _, err := os.Stat(tr.sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after close: %v", err)
	}

	long := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if _, err := newSerialTransport(long, 1); err == nil || !strings.Contains(err.Error(), "shorter state directory") {
		t.Fatalf("a %d-byte socket path: %v", len(long), err)
	}
	if _, err := os.Stat(long); !os.IsNotExist(err) {
		t.Fatalf("the refused run directory was made: %v", err)
	}
}
