package sandbox

import (
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/ferry-vm/ferry/host/backend"
)

// Sandbox VMs get addresses from these ranges: VM n has the /30 at
// 10.200.0.0 + 4n (host .1, guest .2) and the /64 fd00:f3:7:n::/64 (host ::1,
// guest ::2). n cycles through 1..16383.
const maxVMIndex = 1<<14 - 1

// addressing returns the host and guest addresses of VM index n.
func addressing(n uint64) *backend.Network {
	n = n%maxVMIndex + 1
	base := netip.AddrFrom4([4]byte{10, 200, byte(n * 4 >> 8), byte(n * 4 & 0xff)}).As4()
	host4 := netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 1})
	guest4 := netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 2})
	prefix6 := fmt.Sprintf("fd00:f3:7:%x", n)
	return &backend.Network{
		HostIPv4: host4.String() + "/30", GuestIPv4: guest4.String() + "/30",
		HostIPv6: prefix6 + "::1/64", GuestIPv6: prefix6 + "::2/64",
	}
}

// connect creates a veth pair: the host end (named after the VM index)
// gets the host addresses here; the other end is eth0 in the VM's network
// namespace, where init configures the guest addresses.
func connect(n uint64, pid int) (*backend.Network, string, error) {
	nw := addressing(n)
	name := fmt.Sprintf("fy%d", n%maxVMIndex+1)
	// The VM end is created directly inside the VM's namespace as eth0.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsPid(pid)}
	if old, err := netlink.LinkByName(name); err == nil {
		netlink.LinkDel(old) // left over from a VM that is gone
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, "", fmt.Errorf("veth: %w", err)
	}
	fail := func(err error) (*backend.Network, string, error) {
		netlink.LinkDel(veth)
		return nil, "", err
	}
	host, err := netlink.LinkByName(name)
	if err != nil {
		return fail(err)
	}
	for _, a := range []string{nw.HostIPv4, nw.HostIPv6} {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return fail(err)
		}
		addr.Flags = syscall.IFA_F_NODAD
		if err := netlink.AddrAdd(host, addr); err != nil {
			return fail(fmt.Errorf("address %s: %w", a, err))
		}
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fail(err)
	}
	return nw, name, nil
}

// disconnect removes the host end (the pair goes with it).
func disconnect(name string) {
	if l, err := netlink.LinkByName(name); err == nil {
		netlink.LinkDel(l)
	}
}
