package contract

// init's parameters on the kernel command line (/proc/cmdline): which
// transport to serve the host on, whether to turn the root filesystem into
// an overlay, debug logging and how to end. A backend renders them with
// BootParams.String; init reads them with ParseBootParams.
//
// Parameters are words of the form ferry.KEY=VALUE; words without the ferry.
// prefix belong to the kernel and are ignored. A bad value never stops the
// boot: ParseBootParams keeps the default for that key and returns an error
// naming it, which init logs.

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Transport kinds.
const (
	TransportVsock  = "vsock"  // listen on a vsock port (Firecracker, QEMU vhost-vsock)
	TransportSerial = "serial" // a virtio-serial port by name (/dev/virtio-ports/NAME)
	TransportFD     = "fd"     // an inherited, already connected file descriptor
	TransportUnix   = "unix"   // listen on a unix socket path
)

// DefaultVsockPort is the port init listens on by default, as the reference
// design's guest does (Aleph's init1.py).
const DefaultVsockPort = 52

// Transport says where the host connects.
type Transport struct {
	Kind string
	Port uint32 // vsock
	Name string // serial: port name, or a /dev path
	FD   int    // fd
	Path string // unix
}

// String renders t as ferry.transport takes it (vsock:52).
func (t Transport) String() string {
	switch t.Kind {
	case TransportVsock:
		return fmt.Sprintf("vsock:%d", t.Port)
	case TransportSerial:
		return "serial:" + t.Name
	case TransportFD:
		return fmt.Sprintf("fd:%d", t.FD)
	default:
		return "unix:" + t.Path
	}
}

// Shutdown actions.
const (
	ActionPoweroff = "poweroff"
	ActionReboot   = "reboot" // what Firecracker expects: its VMM exits on reboot
)

// BootParams are init's boot parameters. A zero field means "not given":
// String leaves it out and init keeps its default (DefaultBootParams).
type BootParams struct {
	Transport Transport // ferry.transport=vsock:PORT|serial:NAME|fd:N|unix:PATH
	Overlay   bool      // ferry.overlay=1: writable tmpfs overlay over a read-only root
	// Upper, with Overlay, puts the overlay's writable layer on this
	// block device (vdc or serial:NAME, an ext4 filesystem) instead of
	// tmpfs, so that what is written to the root is kept from one boot
	// to the next: an instance's persistent root.
	Upper  string        // ferry.upper=
	Debug  bool          // ferry.debug=1: debug logs
	OnExit string        // ferry.shutdown=poweroff|reboot
	Grace  time.Duration // ferry.grace=5s: how long the app gets to stop
	// Root is the root image's device (vda, /dev/vda or serial:NAME). Set,
	// init running from an initramfs loads the kernel modules, mounts
	// this device read-only and hands over to its /sbin/init.
	Root   string // ferry.root=
	RootFS string // ferry.rootfstype=squashfs|ext4 (default: try each)
	// Channels is the inherited file descriptor of the channel socket
	// (channels.go) on which init passes each ASGI worker's data channel
	// to the host; 0: none, requests reach the workers through init.
	Channels int // ferry.channels=N
}

// DefaultBootParams returns the parameters used when the command line says
// nothing.
func DefaultBootParams() BootParams {
	return BootParams{
		Transport: Transport{Kind: TransportVsock, Port: DefaultVsockPort},
		OnExit:    ActionPoweroff,
		Grace:     5 * time.Second,
	}
}

// String renders the parameters that are set as ferry.* words for a
// kernel command line (or init's -cmdline flag), in a fixed order; values
// with blanks are quoted as the kernel expects.
func (p BootParams) String() string {
	var words []string
	add := func(key, value string) {
		if strings.ContainsAny(value, " \t") {
			value = `"` + value + `"`
		}
		words = append(words, "ferry."+key+"="+value)
	}
	if p.Root != "" {
		add("root", p.Root)
	}
	if p.RootFS != "" {
		add("rootfstype", p.RootFS)
	}
	if p.Overlay {
		add("overlay", "1")
	}
	if p.Upper != "" {
		add("upper", p.Upper)
	}
	if p.Transport.Kind != "" {
		add("transport", p.Transport.String())
	}
	if p.Channels > 0 {
		add("channels", strconv.Itoa(p.Channels))
	}
	if p.Debug {
		add("debug", "1")
	}
	if p.OnExit != "" {
		add("shutdown", p.OnExit)
	}
	if p.Grace != 0 {
		add("grace", p.Grace.String())
	}
	return strings.Join(words, " ")
}

// ParseBootParams reads ferry.* parameters from a kernel command line. It
// always returns usable parameters; errs lists each parameter that was
// rejected (the default stays in force for it).
func ParseBootParams(cmdline string) (p BootParams, errs []error) {
	p = DefaultBootParams()
	for _, word := range SplitCmdline(cmdline) {
		key, value, _ := strings.Cut(word, "=")
		if !strings.HasPrefix(key, "ferry.") {
			continue
		}
		if err := p.set(strings.TrimPrefix(key, "ferry."), value); err != nil {
			errs = append(errs, fmt.Errorf("kernel parameter %s: %w", word, err))
		}
	}
	return p, errs
}

func (p *BootParams) set(key, value string) error {
	switch key {
	case "transport":
		t, err := ParseTransport(value)
		if err != nil {
			return err
		}
		p.Transport = t
	case "overlay":
		return parseBool(value, &p.Overlay)
	case "debug":
		return parseBool(value, &p.Debug)
	case "shutdown":
		if value != ActionPoweroff && value != ActionReboot {
			return fmt.Errorf("want %s or %s", ActionPoweroff, ActionReboot)
		}
		p.OnExit = value
	case "grace":
		d, err := time.ParseDuration(value)
		if err != nil || d < 0 || d > 10*time.Minute {
			return fmt.Errorf("want a duration between 0s and 10m, like 5s")
		}
		p.Grace = d
	case "root":
		if value == "" {
			return fmt.Errorf("want a device: vda, /dev/vda or serial:NAME")
		}
		p.Root = value
	case "upper":
		if !devicePattern.MatchString(value) {
			return fmt.Errorf("want a device: vdc or serial:NAME")
		}
		p.Upper = value
	case "rootfstype":
		p.RootFS = value
	case "channels":
		fd, err := strconv.Atoi(value)
		if err != nil || fd < 3 {
			return fmt.Errorf("want an inherited file descriptor, 3 or more")
		}
		p.Channels = fd
	default:
		return fmt.Errorf("unknown parameter")
	}
	return nil
}

// ParseTransport parses vsock:PORT, serial:NAME, fd:N or unix:PATH.
func ParseTransport(s string) (Transport, error) {
	kind, arg, ok := strings.Cut(s, ":")
	if !ok || arg == "" {
		return Transport{}, fmt.Errorf("want vsock:PORT, serial:NAME, fd:N or unix:PATH")
	}
	switch kind {
	case TransportVsock:
		port, err := strconv.ParseUint(arg, 10, 32)
		if err != nil || port == 0 || port == 0xffffffff {
			return Transport{}, fmt.Errorf("bad vsock port %q", arg)
		}
		return Transport{Kind: kind, Port: uint32(port)}, nil
	case TransportSerial:
		if strings.ContainsAny(arg, " \t") || (strings.Contains(arg, "/") && !strings.HasPrefix(arg, "/dev/")) {
			return Transport{}, fmt.Errorf("bad serial port name %q", arg)
		}
		return Transport{Kind: kind, Name: arg}, nil
	case TransportFD:
		fd, err := strconv.Atoi(arg)
		if err != nil || fd < 0 {
			return Transport{}, fmt.Errorf("bad file descriptor %q", arg)
		}
		return Transport{Kind: kind, FD: fd}, nil
	case TransportUnix:
		if !strings.HasPrefix(arg, "/") {
			return Transport{}, fmt.Errorf("unix socket path %q must be absolute", arg)
		}
		return Transport{Kind: kind, Path: arg}, nil
	}
	return Transport{}, fmt.Errorf("unknown transport %q", kind)
}

func parseBool(value string, dst *bool) error {
	switch value {
	case "", "1", "true", "yes", "on":
		*dst = true
	case "0", "false", "no", "off":
		*dst = false
	default:
		return fmt.Errorf("want 1 or 0")
	}
	return nil
}

// SplitCmdline splits a kernel command line into words as the kernel
// does: on blanks, except inside double quotes, which are removed.
func SplitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, inWord = !inQuote, true
		case (r == ' ' || r == '\t' || r == '\n') && !inQuote:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
