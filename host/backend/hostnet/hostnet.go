// Package hostnet is a node's VM networking: it gives VMs their
// addresses, makes the host end of their link and prepares the node to
// carry their traffic (Host).
//
// VM n gets the /30 at 10.200.0.0 + 4n (host .1, guest .2) and, without a
// routed prefix, the private /64 fd00:f3:7:n::/64 (host ::1, guest ::2).
// With the node's --ipv6-prefix, it gets instead a /124 of that prefix
// (SubPrefix: host ::1, guest ::2), routed to its link by the host end's
// address, and the uplink answers neighbour solicitations for the VM's
// address (an NDP proxy entry) so that an upstream router with the prefix
// on-link finds it. The sandbox backend links a VM with a veth pair, the
// qemu backend with a tap device; both are named fyS-N after the agent's
// node slot S and the VM's number N among the agent's VMs.
package hostnet

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/firewall"
)

// maxVMIndex bounds VM indexes: n cycles through 1..16383.
const maxVMIndex = 1<<14 - 1

// privateAddressing returns the host and guest addresses of VM index n
// without a routed prefix.
func privateAddressing(n uint64) *backend.Network {
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

// LinkName is the host end's interface name for VM index n: fyS-N, for
// the N-th VM (from 1) of the agent in node slot S. That agent's firewall
// judges the links whose names start with firewall.NodeLinkPrefix(S).
func LinkName(n uint64) string {
	return fmt.Sprintf("%s%d", firewall.NodeLinkPrefix(int(n/SlotsPerNode)), n%SlotsPerNode+1)
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
