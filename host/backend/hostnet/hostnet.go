// Package hostnet gives VMs their addresses and sets up the host end of
// their network link: VM n gets the /30 at 10.200.0.0 + 4n (host .1,
// guest .2) and the /64 fd00:f3:7:n::/64 (host ::1, guest ::2). The
// sandbox backend links a VM with a veth pair, the qemu backend with a tap
// device; both are named fyN after the VM's index.
package hostnet

import (
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// maxVMIndex bounds VM indexes: n cycles through 1..16383.
const maxVMIndex = 1<<14 - 1

// Addressing returns the host and guest addresses of VM index n.
func Addressing(n uint64) *backend.Network {
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

// LinkName is the host end's interface name for VM index n.
func LinkName(n uint64) string { return fmt.Sprintf("fy%d", n%maxVMIndex+1) }

// Veth creates a veth pair: the host end (named after the VM index) gets
// the host addresses here; the other end is eth0 in the VM's network
// namespace (netlink.NsFd or netlink.NsPid), where init configures the
// guest addresses. It returns the host end's name.
func Veth(n uint64, vmNetns any) (*backend.Network, string, error) {
	nw := Addressing(n)
	name := LinkName(n)
	// The VM end is created directly inside the VM's namespace, named as
	// init expects when its configuration names no interface (eth0).
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: contract.DefaultInterface, PeerNamespace: vmNetns}
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
	if err := configureHost(host, nw); err != nil {
		return fail(err)
	}
	return nw, name, nil
}

// Tap creates tap device fyN for VM index n with the host addresses and
// returns the open tap (for QEMU's -netdev tap,fd=) and its name. The
// device goes away when the file is closed by everyone holding it.
func Tap(n uint64) (*backend.Network, *os.File, string, error) {
	nw := Addressing(n)
	name := LinkName(n)
	if old, err := netlink.LinkByName(name); err == nil {
		netlink.LinkDel(old)
	}
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		Queues:     1,
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, nil, "", fmt.Errorf("tap %s: %w", name, err)
	}
	if len(tap.Fds) != 1 {
		netlink.LinkDel(tap)
		return nil, nil, "", fmt.Errorf("tap %s: no file descriptor", name)
	}
	f := tap.Fds[0]
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = configureHost(link, nw)
	}
	if err != nil {
		f.Close()
		netlink.LinkDel(tap)
		return nil, nil, "", fmt.Errorf("tap %s: %w", name, err)
	}
	return nw, f, name, nil
}

// configureHost gives the host end its addresses and brings it up.
func configureHost(host netlink.Link, nw *backend.Network) error {
	for _, a := range []string{nw.HostIPv4, nw.HostIPv6} {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return err
		}
		addr.Flags = syscall.IFA_F_NODAD
		if err := netlink.AddrAdd(host, addr); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
	}
	return netlink.LinkSetUp(host)
}

// Remove deletes the host end (a veth pair goes with it).
func Remove(name string) {
	if l, err := netlink.LinkByName(name); err == nil {
		netlink.LinkDel(l)
	}
}

// SlotsPerNode is how many VMs one agent runs at once at most: agent
// (cluster node) slot s owns VM indexes s×SlotsPerNode up to
// (s+1)×SlotsPerNode-1, so the agents of one machine never share a link
// name, an address range or (in the sandbox) a uid range.
const SlotsPerNode = 256

// Pool hands out the VM indexes of one agent: the lowest free one, kept
// until the VM ends. It is safe for concurrent use.
type Pool struct {
	base int
	mu   sync.Mutex
	used map[int]bool
}

// NewPool returns the indexes of agent slot nodeSlot.
func NewPool(nodeSlot int) *Pool {
	return &Pool{base: nodeSlot * SlotsPerNode, used: map[int]bool{}}
}

// Take reserves the lowest free index.
func (p *Pool) Take() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := p.base; i < p.base+SlotsPerNode; i++ {
		if !p.used[i] {
			p.used[i] = true
			return i, nil
		}
	}
	return 0, fmt.Errorf("all %d VM slots of this agent are in use", SlotsPerNode)
}

// Release frees an index.
func (p *Pool) Release(i int) {
	p.mu.Lock()
	delete(p.used, i)
	p.mu.Unlock()
}

// InUse returns how many indexes are taken.
func (p *Pool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.used)
}
