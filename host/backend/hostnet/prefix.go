package hostnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// SubPrefixBits is the length of each VM's sub-prefix of the node's
// --ipv6-prefix: a /124, 16 addresses, as the reference (aleph-vm) gives
// its VMs. The host end of the VM's link has the sub-prefix's ::1 (the
// VM's gateway), the VM ::2; the other 13 are the VM's to add. A larger
// sub-prefix would buy nothing where it matters: behind an upstream
// router that has the node's prefix on-link, only the addresses the host
// answers neighbour solicitations for (one proxy entry per address, the
// VM's ::2) are reachable; and a /124 lets a node run its SlotsPerNode VMs
// in a prefix as small as a /115, so one /64 can be split among many
// agents.
const SubPrefixBits = 124

// MaxPrefixBits is the longest (smallest) node prefix: it holds
// SlotsPerNode+1 sub-prefixes, the first of which is left to the host
// (its own uplink address may be there, as ::1 of a /64 usually is).
const MaxPrefixBits = SubPrefixBits - 9 // 2^9 ≥ SlotsPerNode+1

// ParsePrefix reads a node's --ipv6-prefix: an IPv6 prefix without host
// bits, routable (not link-local, multicast or loopback), of length
// MaxPrefixBits or shorter.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv6 prefix like 2001:db8:1:2::/64", s)
	}
	a := p.Addr()
	switch {
	case !a.Is6() || a.Is4In6():
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv6 prefix", p)
	case p != p.Masked():
		return netip.Prefix{}, fmt.Errorf("%s has bits set after its first %d: the prefix is %s", p, p.Bits(), p.Masked())
	case a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLoopback() || a.IsUnspecified():
		return netip.Prefix{}, fmt.Errorf("%s is not a routable prefix", p)
	case p.Bits() > MaxPrefixBits:
		return netip.Prefix{}, fmt.Errorf("%s is too small: the %d VMs of a node need a /%d or shorter (a /%d each, the first one left to the host)",
			p, SlotsPerNode, MaxPrefixBits, SubPrefixBits)
	}
	return p, nil
}

// SubPrefix returns VM index n's sub-prefix of the node prefix p (valid
// per ParsePrefix): number n%SlotsPerNode+1, the first being the host's.
func SubPrefix(p netip.Prefix, n uint64) netip.Prefix {
	a := p.Addr().As16()
	low := binary.BigEndian.Uint64(a[8:])
	low |= (n%SlotsPerNode + 1) << (128 - SubPrefixBits)
	binary.BigEndian.PutUint64(a[8:], low)
	return netip.PrefixFrom(netip.AddrFrom16(a), SubPrefixBits)
}
