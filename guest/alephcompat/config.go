package alephcompat

import (
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// Where the reference runtime keeps things in the guest.
const (
	// codeMount is where the supervisor mounts a squashfs code drive
	// (program.py get_volumes_for_program), and Ferry's code directory.
	codeMount = contract.DefaultCodeDir
	// packagesDir is put on sys.path by init1.py (setup_code_asgi).
	packagesDir = "/opt/packages"
	// sdkPath is the PYTHONPATH init0.sh exports: the runtime's SDK.
	sdkPath = "/opt/aleph/libs"
)

// translation is a configuration document turned into Ferry's.
type translation struct {
	config *contract.Config
	files  []string // files written for it (code, input data)
}

// translate turns the reference's configuration into Ferry's. Code and
// input data carried inside the document are written into dir, where
// Ferry's setup takes them as files; apiSocket is the guest API bridge's
// socket, told to the program as the reference tells it.
func translate(d *configDoc, dir, apiSocket string) (*translation, error) {
	host, err := hostname(d.VMHash)
	if err != nil {
		return nil, err
	}
	t := &translation{}
	c := &contract.Config{
		ProgramID:      host,
		Hostname:       host,
		Interface:      d.Interface,
		Entrypoint:     d.Entrypoint,
		AuthorizedKeys: d.AuthorizedKeys,
	}
	if st, err := os.Stat(packagesDir); err == nil && st.IsDir() {
		c.Packages = packagesDir
	}
	volumes := d.Volumes
	switch d.Encoding {
	case contract.EncodingSquashfs:
		c.Code.Encoding = contract.EncodingSquashfs
		if i := codeVolume(volumes); i >= 0 {
			c.Code.Device = volumes[i].Device
			volumes = append(volumes[:i:i], volumes[i+1:]...)
		} else if len(d.Code) > 0 {
			if c.Code.Path, err = t.write(dir, "code.squashfs", d.Code); err != nil {
				return nil, err
			}
		} else {
			return nil, errors.New("code: squashfs code is neither a volume at /opt/code nor inside the document")
		}
	case contract.EncodingZip, contract.EncodingPlainFile:
		if len(d.Code) == 0 {
			return nil, fmt.Errorf("code: %s code is missing from the document", d.Encoding)
		}
		c.Code.Encoding = d.Encoding
		if c.Code.Path, err = t.write(dir, "code."+d.Encoding, d.Code); err != nil {
			return nil, err
		}
		if d.Encoding == contract.EncodingPlainFile && d.Interface == contract.InterfaceASGI && !strings.Contains(d.Entrypoint, ":") {
			// init1.py executes plain code and takes the entrypoint
			// from its globals: here the file is the module main.
			c.Entrypoint = "main:" + d.Entrypoint
		}
	default:
		return nil, fmt.Errorf("encoding: %q is not plain, zip or squashfs", d.Encoding)
	}
	for _, v := range volumes {
		fs := ""
		if v.ReadOnly {
			fs = "squashfs" // init1.py mounts read-only volumes as squashfs
		}
		c.Volumes = append(c.Volumes, contract.Volume{Mount: v.Mount, Device: v.Device, FS: fs, ReadOnly: v.ReadOnly})
	}
	c.Network = network(d)
	if len(d.InputData) > 0 {
		path, err := t.write(dir, "input.zip", d.InputData)
		if err != nil {
			return nil, err
		}
		c.InputData = &contract.Source{Path: path}
	}
	c.Env = environment(host, apiSocket, d.Variables)
	t.config = c
	return t, nil
}

// codeVolume returns the index of the squashfs code drive in volumes, or -1.
func codeVolume(volumes []volumeDoc) int {
	for i, v := range volumes {
		if v.Mount == codeMount {
			return i
		}
	}
	return -1
}

// write writes b to a new file dir/name.
func (t *translation) write(dir, name string, b []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("code: %w", err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("code: %w", err)
	}
	t.files = append(t.files, path)
	return path, nil
}

// hostname is the reference's host name for a program: the base32 form
// of its item hash, lower case without padding (init1.py setup_system;
// the hex form is longer than Linux's 63-character limit).
func hostname(vmHash string) (string, error) {
	b, err := hex.DecodeString(vmHash)
	if err != nil || len(b) == 0 {
		return "", fmt.Errorf("vm_hash: %q is not a hexadecimal item hash", vmHash)
	}
	h := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(b), "="))
	if len(h) > 63 {
		return "", fmt.Errorf("vm_hash: %d bytes make a host name longer than 63 characters", len(b))
	}
	return h, nil
}

// network is the document's addressing in Ferry's terms: an IPv4 address
// without a prefix length is a /24 (init1.py setup_network) and an IPv6
// one a /128 (what `ip addr add` makes of it); route and ipv6_gateway are
// the default gateways.
func network(d *configDoc) *contract.Network {
	if d.IP == "" && d.IPv6 == "" {
		return nil
	}
	n := &contract.Network{DNS: d.DNSServers}
	if d.IP != "" {
		addr := d.IP
		if !strings.Contains(addr, "/") {
			addr += "/24"
		}
		n.IPv4 = &contract.Address{Address: addr, Gateway: d.Route}
	}
	if d.IPv6 != "" {
		addr := d.IPv6
		if !strings.Contains(addr, "/") {
			addr += "/128"
		}
		n.IPv6 = &contract.Address{Address: addr, Gateway: d.IPv6Gateway}
	}
	return n
}

// environment is the program's environment as the reference gives it:
// the SDK's settings (init1.py, init0.sh's PYTHONPATH), then the
// program's variables, which win.
func environment(host, apiSocket string, variables map[string]string) map[string]string {
	env := map[string]string{
		"ALEPH_INIT_VERSION":              Version,
		"ALEPH_API_HOST":                  "http://localhost",
		"ALEPH_API_UNIX_SOCKET":           apiSocket,
		"ALEPH_REMOTE_CRYPTO_HOST":        "http://localhost",
		"ALEPH_REMOTE_CRYPTO_UNIX_SOCKET": apiSocket,
		"ALEPH_ADDRESS_TO_USE":            host,
		"PYTHONPATH":                      sdkPath,
	}
	maps.Copy(env, variables)
	return env
}
