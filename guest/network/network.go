// Package network configures the guest's network with netlink, never by
// running ip: loopback up, the configured interface with its IPv4 and IPv6
// addresses (IPv6 without duplicate-address-detection delay), MTU, default
// routes for both families, the host name, /etc/resolv.conf and /etc/hosts.
// A failure is a *contract.ConfigError naming the configuration field.
package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// fail is a network configuration failure at one configuration field.
func fail(field string, format string, args ...any) error {
	return contract.NewConfigError(contract.PhaseNetwork, field, fmt.Errorf(format, args...))
}

// failHostname is a failure to set or write the host name.
func failHostname(format string, args ...any) error {
	return contract.NewConfigError(contract.PhaseHostname, "hostname", fmt.Errorf(format, args...))
}

// LoopbackUp brings lo up (the kernel creates it down).
func LoopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// Apply configures the interface named in n (eth0 by default).
func Apply(n *contract.Network) error {
	name := n.Interface
	if name == "" {
		name = contract.DefaultInterface
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fail("network.interface", "interface %s: %v", name, err)
	}
	if n.IPv6 != nil {
		// Addresses are usable at once: no duplicate address detection on a
		// point-to-point link the host set up for this VM alone.
		if err := writeSysctl("net/ipv6/conf/"+name+"/accept_dad", "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fail("network.ipv6", "disabling DAD: %v", err)
		}
	}
	if n.MTU != 0 {
		if err := netlink.LinkSetMTU(link, n.MTU); err != nil {
			return fail("network.mtu", "set MTU %d: %v", n.MTU, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fail("network.interface", "bring %s up: %v", name, err)
	}
	for _, fam := range []struct {
		field string
		addr  *contract.Address
	}{{"network.ipv4", n.IPv4}, {"network.ipv6", n.IPv6}} {
		if fam.addr == nil {
			continue
		}
		if err := addAddress(link, fam.field, fam.addr); err != nil {
			return err
		}
	}
	return nil
}

func addAddress(link netlink.Link, field string, a *contract.Address) error {
	pfx := a.Prefix()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())}}
	if pfx.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fail(field+".address", "add %s: %v", a.Address, err)
	}
	if a.Gateway == "" {
		return nil
	}
	gw := net.ParseIP(a.Gateway)
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}
	if pfx.Addr().Is4() {
		route.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	} else {
		route.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		// An IPv6 gateway outside the address's prefix (often link-local
		// or a /128 peer) needs an on-link route first.
		if !pfx.Masked().Contains(netip.MustParseAddr(a.Gateway)) {
			onlink := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(128, 128)}, Scope: netlink.SCOPE_LINK}
			if err := netlink.RouteReplace(onlink); err != nil {
				return fail(field+".gateway", "on-link route to %s: %v", a.Gateway, err)
			}
		}
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fail(field+".gateway", "default route via %s: %v", a.Gateway, err)
	}
	return nil
}

// SetHostname sets the kernel host name.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return failHostname("sethostname: %v", err)
	}
	return nil
}

// WriteResolvConf writes the DNS servers into root/etc/resolv.conf.
func WriteResolvConf(root string, servers []string) error {
	var b strings.Builder
	b.WriteString("# written by ferry init\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if err := writeFile(filepath.Join(root, "etc/resolv.conf"), b.String()); err != nil {
		return fail("network.dns", "%v", err)
	}
	return nil
}

// WriteHosts writes root/etc/hosts with localhost and the host name.
func WriteHosts(root, hostname string) error {
	var b strings.Builder
	b.WriteString("# written by ferry init\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if hostname != "" {
		fmt.Fprintf(&b, "127.0.1.1\t%s\n", hostname)
	}
	if err := writeFile(filepath.Join(root, "etc/hosts"), b.String()); err != nil {
		return failHostname("%v", err)
	}
	return nil
}

// writeFile replaces path atomically (a read-only root gets an error).
func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".ferry-tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeSysctl(key, value string) error {
	return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
}
