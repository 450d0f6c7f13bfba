// Package setup applies a validated configuration to the guest, phase by
// phase: host name, network, volumes, code, input data, SSH keys. Each
// phase is timestamped on the boot timeline, and a failure is reported as a
// *contract.ConfigError naming the phase and the configuration field at
// fault, so init can answer the host instead of falling over.
package setup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferry-vm/ferry/guest/archive"
	"github.com/ferry-vm/ferry/guest/blockdev"
	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/network"
	"github.com/ferry-vm/ferry/internal/filecopy"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Paths says where things go; tests point them into a temporary directory.
type Paths struct {
	Root     string // prefix for /etc and /root (files written by init)
	Code     string // where code is mounted or extracted
	Data     string // where input data is extracted
	DevRoot  string // /dev
	SysBlock string // /sys/block, to find devices by serial
}

// DefaultPaths are the paths inside a VM.
var DefaultPaths = Paths{Root: "/", Code: contract.DefaultCodeDir, Data: "/data", DevRoot: "/dev", SysBlock: "/sys/block"}

// Options select what this environment can do.
type Options struct {
	Paths Paths
	// System is true when init owns the machine (PID 1): it may set the host
	// name, configure interfaces and mount devices.
	System bool
}

// Result is what a successful setup produced.
type Result struct {
	CodeDir string   // directory holding the program (none for an instance)
	Mounts  []string // mount points, in mount order (unmount in reverse)
}

// Apply runs every phase. On error, Result still lists what was mounted so
// the caller can unmount it.
func Apply(ctx context.Context, log *slog.Logger, c *contract.Config, opt Options, tl *boot.Timeline) (*Result, error) {
	res := &Result{}
	p := opt.Paths
	if opt.System {
		if c.Hostname != "" {
			if err := network.SetHostname(c.Hostname); err != nil {
				return res, err
			}
		}
		if err := network.LoopbackUp(); err != nil {
			return res, contract.NewConfigError(contract.PhaseNetwork, "network", err)
		}
		if c.Network != nil {
			if err := network.Apply(c.Network); err != nil {
				return res, err
			}
		}
		tl.Mark("network")
	}
	if err := network.WriteHosts(p.Root, c.Hostname); err != nil {
		log.Warn("cannot write /etc/hosts", "err", err)
	}
	if c.Network != nil && len(c.Network.DNS) > 0 {
		if err := network.WriteResolvConf(p.Root, c.Network.DNS); err != nil {
			return res, err
		}
	}
	for i, v := range c.Volumes {
		field := fmt.Sprintf("volumes[%d]", i)
		if !opt.System {
			return res, contract.NewConfigError(contract.PhaseVolumes, field, errors.New("volumes need init to run as PID 1"))
		}
		dev, err := findDevice(p, v.Device)
		if err != nil {
			return res, contract.NewConfigError(contract.PhaseVolumes, field+".device", err)
		}
		if err := blockdev.Mount(dev, v.Mount, v.FS, v.ReadOnly); err != nil {
			return res, contract.NewConfigError(contract.PhaseVolumes, field, err)
		}
		res.Mounts = append(res.Mounts, v.Mount)
	}
	if len(c.Volumes) > 0 {
		tl.Mark("volumes")
	}
	if c.Interface != contract.InterfaceInstance { // an instance has no code
		codeDir, mounted, err := prepareCode(ctx, p, c, opt.System)
		if mounted != "" {
			res.Mounts = append(res.Mounts, mounted)
		}
		if err != nil {
			return res, err
		}
		res.CodeDir = codeDir
		if err := checkEntrypoint(c, codeDir); err != nil {
			return res, err
		}
	}
	if c.InputData != nil {
		src, err := sourcePath(p, *c.InputData)
		if err != nil {
			return res, contract.NewConfigError(contract.PhaseData, "input_data", err)
		}
		if err := archive.ExtractZipFile(ctx, src, p.Data, archive.DefaultLimits); err != nil {
			return res, contract.NewConfigError(contract.PhaseData, "input_data", err)
		}
	}
	tl.Mark("code")
	if len(c.AuthorizedKeys) > 0 {
		if err := writeAuthorizedKeys(p.Root, c.AuthorizedKeys); err != nil {
			return res, contract.NewConfigError(contract.PhaseSSH, "authorized_keys", err)
		}
	}
	return res, nil
}

// findDevice resolves vdb or serial:NAME to a /dev path.
func findDevice(p Paths, device string) (string, error) {
	return blockdev.Find(blockdev.Paths{Dev: p.DevRoot, SysBlock: p.SysBlock}, device)
}

func sourcePath(p Paths, s contract.Source) (string, error) {
	if s.Path != "" {
		return s.Path, nil
	}
	return findDevice(p, s.Device)
}

// prepareCode makes the program available in a directory and returns it,
// with the mount point it created, if any.
func prepareCode(ctx context.Context, p Paths, c *contract.Config, system bool) (dir, mounted string, err error) {
	fail := func(field string, err error) (string, string, error) {
		return "", mounted, contract.NewConfigError(contract.PhaseCode, field, err)
	}
	switch c.Code.Encoding {
	case contract.EncodingDirectory:
		st, err := os.Stat(c.Code.Path)
		if err != nil || !st.IsDir() {
			return fail("code.path", fmt.Errorf("%s is not a directory", c.Code.Path))
		}
		return c.Code.Path, "", nil
	case contract.EncodingSquashfs:
		if !system {
			return fail("code", errors.New("a squashfs code volume needs init to run as PID 1"))
		}
		src, err := sourcePath(p, c.Code.Source)
		if err != nil {
			return fail("code", err)
		}
		if err := blockdev.Mount(src, p.Code, "squashfs", true); err != nil {
			return fail("code", err)
		}
		return p.Code, p.Code, nil
	case contract.EncodingZip:
		src, err := sourcePath(p, c.Code.Source)
		if err != nil {
			return fail("code", err)
		}
		if err := archive.ExtractZipFile(ctx, src, p.Code, archive.DefaultLimits); err != nil {
			return fail("code", err)
		}
		return p.Code, "", nil
	default: // one file, named for its entrypoint
		src, err := sourcePath(p, c.Code.Source)
		if err != nil {
			return fail("code", err)
		}
		if err := filecopy.Copy(src, filepath.Join(p.Code, contract.FileName(c.Interface, c.Entrypoint)), 0o755); err != nil {
			return fail("code", err)
		}
		return p.Code, "", nil
	}
}

// checkEntrypoint verifies the program's entry exists before it is started.
func checkEntrypoint(c *contract.Config, dir string) error {
	if c.Interface == contract.InterfaceASGI {
		module, _, _ := strings.Cut(c.Entrypoint, ":")
		rel := filepath.Join(strings.Split(module, ".")...)
		for _, cand := range []string{rel + ".py", filepath.Join(rel, "__init__.py")} {
			if _, err := os.Stat(filepath.Join(dir, cand)); err == nil {
				return nil
			}
		}
		if c.Packages != "" {
			return nil // the module may live in the packages directory
		}
		return contract.NewConfigError(contract.PhaseCode, "entrypoint", fmt.Errorf("module %s not found in the code (%s.py or %s/__init__.py)", module, rel, rel))
	}
	path := c.Entrypoint
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	st, err := os.Stat(path)
	if err != nil {
		return contract.NewConfigError(contract.PhaseCode, "entrypoint", fmt.Errorf("%s does not exist", c.Entrypoint))
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return contract.NewConfigError(contract.PhaseCode, "entrypoint", fmt.Errorf("%s is not an executable file", c.Entrypoint))
	}
	return nil
}

// writeAuthorizedKeys writes root's authorized_keys with the permissions
// sshd insists on.
func writeAuthorizedKeys(root string, keys []string) error {
	dir := filepath.Join(root, "root/.ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	content := strings.Join(keys, "\n") + "\n"
	path := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}
