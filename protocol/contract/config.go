package contract

// The configuration document the host sends in the CONFIG frame, and its
// validation. Every problem is a *ConfigError of phase "validate" naming
// the offending field, so the host can show exactly what to fix; nothing
// here touches the system.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Code encodings: how the code named by Code.Source is laid out. The
// names are those of an Aleph PROGRAM message's code.encoding, where
// "plain" is one file as it is (the reference init runs it or writes it
// to /opt/code), plus "directory" for code the guest already has as a
// tree. (The agent's manifest says "plain" for unpacked code on the host,
// a directory or one file; its backends turn that into a directory or a
// squashfs drive here.)
const (
	// EncodingDirectory is a directory the guest already has (the
	// sandbox's bind mount); Source.Path names it.
	EncodingDirectory = "directory"
	// EncodingSquashfs is a squashfs image (a block device, or a file),
	// mounted read-only at the code directory.
	EncodingSquashfs = "squashfs"
	// EncodingZip is a zip archive (file or device), extracted safely
	// into the code directory.
	EncodingZip = "zip"
	// EncodingPlainFile ("plain") is one file, a Python module or a
	// program, copied into the code directory under the name FileName
	// gives it.
	EncodingPlainFile = "plain"
)

// Config is the whole document.
type Config struct {
	ProgramID  string `json:"program_id"`
	Interface  string `json:"interface"`
	Entrypoint string `json:"entrypoint,omitempty"` // none for an instance
	// Code is where the program is; an instance has none.
	Code           Code              `json:"code,omitzero"`
	Packages       string            `json:"packages,omitempty"`   // directory put on sys.path after the code
	InputData      *Source           `json:"input_data,omitempty"` // zip extracted to /data
	Volumes        []Volume          `json:"volumes,omitempty"`
	Network        *Network          `json:"network,omitempty"`
	Hostname       string            `json:"hostname,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	AuthorizedKeys []string          `json:"authorized_keys,omitempty"`
	Workers        int               `json:"workers,omitempty"` // ASGI worker processes; 0 = number of CPUs
	Python         string            `json:"python,omitempty"`  // interpreter; default /usr/bin/python3
	Port           int               `json:"port,omitempty"`    // executable: PORT given to the program; default DefaultPort
	// API is where init serves the guest API (a loopback IP:PORT, not
	// the executable's port); empty: DefaultAPIAddress.
	API string `json:"api_address,omitempty"`
}

// Code says where the program's code is.
type Code struct {
	Encoding string `json:"encoding"`
	Source
}

// Source is a file or block device: Path (absolute path or /dev node) or
// Device (a block device by name, vdb, or by serial, serial:NAME).
type Source struct {
	Path   string `json:"path,omitempty"`
	Device string `json:"device,omitempty"`
}

// Volume is a filesystem mounted for the program.
type Volume struct {
	Mount    string `json:"mount"`
	Device   string `json:"device"`       // vdc, or serial:NAME
	FS       string `json:"fs,omitempty"` // squashfs, ext4, or empty for auto
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Network configures the guest's interface.
type Network struct {
	Interface string   `json:"interface,omitempty"` // default eth0
	IPv4      *Address `json:"ipv4,omitempty"`
	IPv6      *Address `json:"ipv6,omitempty"`
	MTU       int      `json:"mtu,omitempty"`
	DNS       []string `json:"dns,omitempty"`
}

// Address is an address with its prefix length and the default gateway.
type Address struct {
	Address string `json:"address"` // 10.0.0.2/24, fd00::2/64
	Gateway string `json:"gateway,omitempty"`
}

// fieldErr is a validation problem at one field (a dotted path, such as
// network.ipv4.address).
func fieldErr(field, format string, args ...any) *ConfigError {
	return &ConfigError{Phase: PhaseValidate, Field: field, Message: fmt.Sprintf(format, args...)}
}

// MaxConfigSize bounds the configuration document.
const MaxConfigSize = 1 << 20

// Parse decodes and validates a configuration document. Unknown fields are
// errors (a typo must not be silently ignored).
func Parse(doc []byte) (*Config, error) {
	if len(doc) > MaxConfigSize {
		return nil, fieldErr("(document)", "%d bytes exceeds the %d-byte limit", len(doc), MaxConfigSize)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, jsonError(err)
	}
	if dec.More() {
		return nil, fieldErr("(document)", "trailing data after the JSON object")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// jsonError turns a decoding error into a ConfigError naming the field.
func jsonError(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return fieldErr(typeErr.Field, "expected %s, got JSON %s", typeErr.Type, typeErr.Value)
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return fieldErr(strings.Trim(name, `"`), "unknown field")
	}
	return fieldErr("(document)", "invalid JSON: %s", strings.TrimPrefix(msg, "json: "))
}

var (
	hostnamePattern = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	envNamePattern  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	ifacePattern    = regexp.MustCompile(`^[a-z][a-z0-9]{0,14}$`)
	devicePattern   = regexp.MustCompile(`^(serial:[A-Za-z0-9_.-]{1,64}|[a-z][a-z0-9]{1,15})$`)
	// ASGI entrypoints: dotted module, colon, attribute path.
	asgiEntry  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)
	sshKeyType = regexp.MustCompile(`^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]+( .*)?$`)
)

// Validate checks every field and returns the first problem found.
func (c *Config) Validate() error {
	if !ValidID(c.ProgramID) {
		return fieldErr("program_id", "%q is not a safe identifier (lower-case letters, digits and '-', at most 63)", c.ProgramID)
	}
	switch c.Interface {
	case InterfaceASGI:
		if !asgiEntry.MatchString(c.Entrypoint) {
			return fieldErr("entrypoint", "%q is not module:attribute (like main:app)", c.Entrypoint)
		}
	case InterfaceExecutable:
		if c.Entrypoint == "" || strings.ContainsRune(c.Entrypoint, 0) {
			return fieldErr("entrypoint", "must name the program to run")
		}
	case InterfaceInstance:
		if c.Entrypoint != "" {
			return fieldErr("entrypoint", "an instance runs no program: leave it out")
		}
		if c.Code != (Code{}) {
			return fieldErr("code", "an instance has no code: leave it out")
		}
	default:
		return fieldErr("interface", "%q is not asgi, executable or instance", c.Interface)
	}
	if c.Interface != InterfaceInstance {
		if err := c.Code.validate(); err != nil {
			return err
		}
	}
	if c.Packages != "" && !path.IsAbs(c.Packages) {
		return fieldErr("packages", "%q must be an absolute path", c.Packages)
	}
	if c.InputData != nil {
		if err := c.InputData.validate("input_data"); err != nil {
			return err
		}
	}
	mounts := map[string]bool{}
	for i, v := range c.Volumes {
		if err := v.validate(fmt.Sprintf("volumes[%d]", i), mounts); err != nil {
			return err
		}
	}
	if c.Network != nil {
		if err := c.Network.validate(); err != nil {
			return err
		}
	}
	if c.Hostname != "" && !hostnamePattern.MatchString(c.Hostname) {
		return fieldErr("hostname", "%q is not a valid host name", c.Hostname)
	}
	for k, v := range c.Env {
		if !envNamePattern.MatchString(k) {
			return fieldErr("env."+k, "not a valid environment variable name")
		}
		if strings.ContainsRune(v, 0) {
			return fieldErr("env."+k, "value contains a NUL byte")
		}
	}
	for i, k := range c.AuthorizedKeys {
		if !ValidAuthorizedKey(k) {
			return fieldErr(fmt.Sprintf("authorized_keys[%d]", i), "not a single OpenSSH public key line")
		}
	}
	if c.Workers < 0 || c.Workers > 256 {
		return fieldErr("workers", "%d is outside 0..256", c.Workers)
	}
	if c.Python != "" && !path.IsAbs(c.Python) {
		return fieldErr("python", "%q must be an absolute path", c.Python)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fieldErr("port", "%d is not a TCP port", c.Port)
	}
	return c.validateAPI()
}

func (c *Code) validate() error {
	switch c.Encoding {
	case EncodingDirectory, EncodingSquashfs, EncodingZip, EncodingPlainFile:
	default:
		return fieldErr("code.encoding", "%q is not directory, squashfs, zip or plain", c.Encoding)
	}
	if c.Encoding == EncodingDirectory && c.Device != "" {
		return fieldErr("code.device", "a directory has a path, not a device")
	}
	return c.Source.validate("code")
}

func (s *Source) validate(field string) error {
	switch {
	case s.Path != "" && s.Device != "":
		return fieldErr(field, "give path or device, not both")
	case s.Path == "" && s.Device == "":
		return fieldErr(field, "needs a path or a device")
	case s.Path != "" && (!path.IsAbs(s.Path) || path.Clean(s.Path) != s.Path):
		return fieldErr(field+".path", "%q must be a clean absolute path", s.Path)
	case s.Device != "" && !devicePattern.MatchString(s.Device):
		return fieldErr(field+".device", "%q is not a device name (vdb) or serial:NAME", s.Device)
	}
	return nil
}

// reservedMounts may not be used as volume mount points.
var reservedMounts = map[string]bool{"/": true, "/proc": true, "/sys": true, "/dev": true, "/run": true, "/tmp": true, "/etc": true, "/usr": true, "/bin": true, "/sbin": true, "/lib": true}

func (v *Volume) validate(field string, seen map[string]bool) error {
	if !path.IsAbs(v.Mount) || path.Clean(v.Mount) != v.Mount {
		return fieldErr(field+".mount", "%q must be a clean absolute path", v.Mount)
	}
	if reservedMounts[v.Mount] {
		return fieldErr(field+".mount", "%q is a system directory", v.Mount)
	}
	if seen[v.Mount] {
		return fieldErr(field+".mount", "%q is mounted twice", v.Mount)
	}
	seen[v.Mount] = true
	if !devicePattern.MatchString(v.Device) {
		return fieldErr(field+".device", "%q is not a device name (vdc) or serial:NAME", v.Device)
	}
	switch v.FS {
	case "", "squashfs", "ext4", "ext2", "ext3", "vfat", "xfs", "btrfs":
	default:
		return fieldErr(field+".fs", "unsupported filesystem %q", v.FS)
	}
	return nil
}

func (n *Network) validate() error {
	if n.Interface != "" && !ifacePattern.MatchString(n.Interface) {
		return fieldErr("network.interface", "%q is not an interface name", n.Interface)
	}
	if n.IPv4 == nil && n.IPv6 == nil {
		return fieldErr("network", "needs ipv4, ipv6 or both")
	}
	if n.IPv4 != nil {
		if err := n.IPv4.validate("network.ipv4", true); err != nil {
			return err
		}
	}
	if n.IPv6 != nil {
		if err := n.IPv6.validate("network.ipv6", false); err != nil {
			return err
		}
	}
	if n.MTU != 0 && (n.MTU < 576 || n.MTU > 65535) {
		return fieldErr("network.mtu", "%d is outside 576..65535", n.MTU)
	}
	for i, d := range n.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return fieldErr(fmt.Sprintf("network.dns[%d]", i), "%q is not an IP address", d)
		}
	}
	return nil
}

func (a *Address) validate(field string, v4 bool) error {
	family := "IPv6"
	if v4 {
		family = "IPv4"
	}
	pfx, err := netip.ParsePrefix(a.Address)
	if err != nil {
		return fieldErr(field+".address", "%q is not an address with prefix length (%s)", a.Address, strings.TrimPrefix(err.Error(), "netip.ParsePrefix("))
	}
	if pfx.Addr().Is4() != v4 || pfx.Addr().Is4In6() {
		return fieldErr(field+".address", "%q is not an %s address", a.Address, family)
	}
	if a.Gateway != "" {
		gw, err := netip.ParseAddr(a.Gateway)
		if err != nil || gw.Is4() != v4 {
			return fieldErr(field+".gateway", "%q is not an %s address", a.Gateway, family)
		}
		if v4 && !pfx.Masked().Contains(gw) {
			return fieldErr(field+".gateway", "%s is outside %s", gw, pfx.Masked())
		}
	}
	return nil
}

// ValidAuthorizedKey reports whether line is one OpenSSH public key line
// (type, base64 key, optional comment), as authorized_keys takes it.
func ValidAuthorizedKey(line string) bool {
	return !strings.ContainsAny(line, "\n\r") && sshKeyType.MatchString(strings.TrimSpace(line))
}

// FileName is the name a program whose code is one file has in the code
// directory, where its entrypoint looks for it: for asgi its module's file
// (main.py for main:app, pkg/main.py for pkg.main:app), for an executable
// the entrypoint itself when it is a relative path inside the directory
// (server, bin/server), else its base name. init names an
// EncodingPlainFile so, and the host's backends name a single code file
// so in the directory or image they give the guest.
func FileName(iface, entrypoint string) string {
	if iface == InterfaceASGI {
		module, _, _ := strings.Cut(entrypoint, ":")
		return strings.ReplaceAll(module, ".", "/") + ".py"
	}
	if filepath.IsLocal(entrypoint) {
		return path.Clean(entrypoint)
	}
	return path.Base(entrypoint)
}

// Prefix returns the parsed address (after Validate succeeded).
func (a *Address) Prefix() netip.Prefix { return netip.MustParsePrefix(a.Address) }
