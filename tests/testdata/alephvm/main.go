// Command alephvm stands for what a Firecracker VM under aleph-vm gives
// its init, for tests that run init as PID 1 in fresh namespaces without
// a VM: the drives as block devices named as the supervisor names them
// (/dev/vdb, /dev/vdc ...), and the vsock device, here a directory of unix
// sockets shared with the host, where init's -transport unix:PATH and
// -host-uds PATH point.
//
// It must be started as PID 1 of new PID and mount namespaces. It makes
// every mount private (nothing it does reaches the host), lays an overlay
// over /dev whose upper layer, on a tmpfs, holds the drives' nodes (the
// host's /dev is not written), mounts a fresh /tmp with the shared
// directory inside it (init's overlay root carries /tmp across, not other
// mounts), then executes init, which stays PID 1:
//
//	alephvm -layer DIR -drive vdc=7:3 -share HOSTDIR=/tmp/vsock -- /path/to/init ARGS...
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var drives, shares list
	layer := flag.String("layer", "", "empty directory where the tmpfs of /dev's upper layer is mounted")
	flag.Var(&drives, "drive", "NAME=MAJOR:MINOR: a block device node /dev/NAME (repeatable)")
	flag.Var(&shares, "share", "HOSTDIR=GUESTDIR: HOSTDIR bound at GUESTDIR, which must be under /tmp (repeatable)")
	flag.Parse()
	if err := prepare(*layer, drives, shares); err != nil {
		fmt.Fprintf(os.Stderr, "alephvm: %v\n", err)
		os.Exit(1)
	}
	argv := flag.Args()
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "alephvm: no init to execute")
		os.Exit(2)
	}
	err := syscall.Exec(argv[0], argv, os.Environ())
	fmt.Fprintf(os.Stderr, "alephvm: executing %s: %v\n", argv[0], err)
	os.Exit(1)
}

func prepare(layer string, drives, shares []string) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("must run as PID 1 of new PID and mount namespaces (pid %d)", os.Getpid())
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if layer == "" {
		return fmt.Errorf("-layer is required")
	}
	if err := unix.Mount("tmpfs", layer, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs on %s: %w", layer, err)
	}
	upper, work := filepath.Join(layer, "upper"), filepath.Join(layer, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	for _, d := range drives {
		name, num, ok := strings.Cut(d, "=")
		var major, minor uint32
		if _, err := fmt.Sscanf(num, "%d:%d", &major, &minor); !ok || err != nil || strings.Contains(name, "/") {
			return fmt.Errorf("-drive %q is not NAME=MAJOR:MINOR", d)
		}
		if err := unix.Mknod(filepath.Join(upper, name), unix.S_IFBLK|0o660, int(unix.Mkdev(major, minor))); err != nil {
			return fmt.Errorf("drive %s: %w", name, err)
		}
	}
	opts := fmt.Sprintf("lowerdir=/dev,upperdir=%s,workdir=%s", upper, work)
	mounts := []struct{ src, target, fs, data string }{
		{"overlay", "/dev", "overlay", opts},
		{"devpts", "/dev/pts", "devpts", "newinstance,gid=5,mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
	}
	for _, m := range mounts {
		if err := unix.Mount(m.src, m.target, m.fs, unix.MS_NOSUID, m.data); err != nil {
			return fmt.Errorf("%s on %s (%s): %w", m.fs, m.target, m.data, err)
		}
	}
	for _, s := range shares {
		host, guest, ok := strings.Cut(s, "=")
		if !ok || !strings.HasPrefix(guest, "/tmp/") {
			return fmt.Errorf("-share %q is not HOSTDIR=/tmp/GUESTDIR", s)
		}
		if err := os.MkdirAll(guest, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(host, guest, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding %s at %s: %w", host, guest, err)
		}
	}
	return nil
}
