package firewall

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// maxPorts bounds a VM's allowed ports and forwards (each): their elements
// go to the kernel in one netlink attribute, which holds at most 64 KiB.
const maxPorts = 1024

// checkIfname checks an interface name as the kernel would take it.
func checkIfname(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) >= unix.IFNAMSIZ:
		return fmt.Errorf("interface name %q longer than %d bytes", name, unix.IFNAMSIZ-1)
	case strings.ContainsAny(name, "\x00/ "):
		return fmt.Errorf("interface name %q has a NUL, slash or space", name)
	}
	return nil
}

// protoNumber is the IP protocol number of "tcp" or "udp".
func protoNumber(proto string) (byte, error) {
	switch proto {
	case "tcp":
		return unix.IPPROTO_TCP, nil
	case "udp":
		return unix.IPPROTO_UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp or udp", proto)
}

// validate checks one VM on its own, for the firewall of the links that
// start with prefix.
func validate(vm VM, prefix string) error {
	if err := checkIfname(vm.Link); err != nil {
		return fmt.Errorf("link: %w", err)
	}
	if !strings.HasPrefix(vm.Link, prefix) {
		return fmt.Errorf("link %q: this agent's links start with %q (its rules judge only those)", vm.Link, prefix)
	}
	if vm.IPv4.IsValid() && !vm.IPv4.Is4() {
		return fmt.Errorf("ipv4 %s is not an IPv4 address", vm.IPv4)
	}
	if vm.IPv6.IsValid() && (!vm.IPv6.Is6() || vm.IPv6.Is4In6()) {
		return fmt.Errorf("ipv6 %s is not an IPv6 address", vm.IPv6)
	}
	for _, a := range []netip.Addr{vm.IPv4, vm.IPv6} {
		if a.IsValid() && (a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.Zone() != "") {
			return fmt.Errorf("address %s cannot be a VM's", a)
		}
	}
	if len(vm.AllowedPorts) > maxPorts || len(vm.Forwards) > maxPorts {
		return fmt.Errorf("more than %d allowed ports or forwards", maxPorts)
	}
	for _, p := range vm.AllowedPorts {
		if _, err := protoNumber(p.Proto); err != nil {
			return fmt.Errorf("allowed port %d: %w", p.Port, err)
		}
		if p.Port == 0 {
			return fmt.Errorf("allowed port %s/0: ports are 1-65535", p.Proto)
		}
	}
	if len(vm.Forwards) > 0 && !vm.IPv4.IsValid() {
		return errors.New("port forwards need the VM's IPv4 address")
	}
	seen := map[Port]bool{}
	for _, fw := range vm.Forwards {
		if _, err := protoNumber(fw.Proto); err != nil {
			return fmt.Errorf("forward of host port %d: %w", fw.HostPort, err)
		}
		if fw.HostPort == 0 || fw.VMPort == 0 {
			return fmt.Errorf("forward %s %d->%d: ports are 1-65535", fw.Proto, fw.HostPort, fw.VMPort)
		}
		host := Port{fw.Proto, fw.HostPort}
		if seen[host] {
			return fmt.Errorf("host port %s/%d forwarded twice", fw.Proto, fw.HostPort)
		}
		seen[host] = true
	}
	return nil
}

// conflict tells whether vm claims what another registered VM holds: an
// address or a forwarded host port.
func conflict(vm, other VM) error {
	for _, a := range []netip.Addr{vm.IPv4, vm.IPv6} {
		if a.IsValid() && (a == other.IPv4 || a == other.IPv6) {
			return fmt.Errorf("address %s is already %s's", a, other.Link)
		}
	}
	for _, fw := range vm.Forwards {
		for _, ofw := range other.Forwards {
			if fw.Proto == ofw.Proto && fw.HostPort == ofw.HostPort {
				return fmt.Errorf("host port %s/%d already forwards to %s", fw.Proto, fw.HostPort, other.Link)
			}
		}
	}
	return nil
}

// elements are the set elements of a validated VM, by set index. The
// keys are laid out as the rules load them: each field of a
// concatenation padded to 4 bytes, addresses and ports in network order.
func elements(vm VM) [numSets][]nftables.SetElement {
	var out [numSets][]nftables.SetElement
	if vm.Link == "" {
		return out
	}
	link := make([]byte, unix.IFNAMSIZ)
	copy(link, vm.Link)
	if vm.Internet && vm.IPv4.IsValid() {
		a := vm.IPv4.As4()
		out[setEgress4] = append(out[setEgress4], nftables.SetElement{Key: cat4(link, a[:])})
		out[setMasq4] = append(out[setMasq4], nftables.SetElement{Key: a[:]})
	}
	if vm.Internet && vm.IPv6.IsValid() {
		a := vm.IPv6.As16()
		out[setEgress6] = append(out[setEgress6], nftables.SetElement{Key: cat4(link, a[:])})
	}
	for _, p := range vm.AllowedPorts {
		proto, _ := protoNumber(p.Proto)
		if vm.IPv4.IsValid() {
			a := vm.IPv4.As4()
			out[setAllowed4] = append(out[setAllowed4], nftables.SetElement{Key: cat4(a[:], []byte{proto}, port(p.Port))})
		}
		if vm.IPv6.IsValid() {
			a := vm.IPv6.As16()
			out[setAllowed6] = append(out[setAllowed6], nftables.SetElement{Key: cat4(a[:], []byte{proto}, port(p.Port))})
		}
	}
	for _, fw := range vm.Forwards {
		proto, _ := protoNumber(fw.Proto)
		a := vm.IPv4.As4()
		out[setForwards4] = append(out[setForwards4], nftables.SetElement{
			Key: cat4([]byte{proto}, port(fw.HostPort)),
			Val: cat4(a[:], port(fw.VMPort)),
		})
	}
	for i := range out {
		out[i] = unique(out[i]) // a port listed twice: one element
	}
	return out
}

// unique drops repeated elements, keeping the first.
func unique(elems []nftables.SetElement) []nftables.SetElement {
	var out []nftables.SetElement
	for _, e := range elems {
		if !contains(out, e) {
			out = append(out, e)
		}
	}
	return out
}

// contains tells whether list holds an element with e's key and value.
func contains(list []nftables.SetElement, e nftables.SetElement) bool {
	for _, o := range list {
		if bytes.Equal(e.Key, o.Key) && bytes.Equal(e.Val, o.Val) {
			return true
		}
	}
	return false
}

// port is a port in network byte order.
func port(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }

// cat4 concatenates fields, each padded with zeros to a multiple of 4
// bytes (one register per 4 bytes).
func cat4(fields ...[]byte) []byte {
	var out []byte
	for _, f := range fields {
		out = append(out, f...)
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
	}
	return out
}

// diff returns the elements of old that are not in next (to delete) and
// those of next not in old (to add); elements in both stay untouched.
func diff(old, next []nftables.SetElement) (del, add []nftables.SetElement) {
	for _, e := range old {
		if !contains(next, e) {
			del = append(del, e)
		}
	}
	for _, e := range next {
		if !contains(old, e) {
			add = append(add, e)
		}
	}
	return del, add
}
