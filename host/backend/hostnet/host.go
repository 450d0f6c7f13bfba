package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/backend/firewall"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Options configure a node's VM networking.
type Options struct {
	// IPv6Prefix is the node's routed prefix (ParsePrefix), from which
	// each VM gets a /124; the zero Prefix keeps the private addresses.
	IPv6Prefix netip.Prefix
	// Uplink is the interface toward the outside; empty: the interface
	// of the default route.
	Uplink string
	// DNS are the resolvers the VMs get; nil: HostResolvers.
	DNS []netip.Addr
	// NodeSlot is the agent's slot (NewPool): the links of its VM
	// indexes are its own, removed when found stale.
	NodeSlot int
	// Log receives what the node's networking changes.
	Log *slog.Logger
}

// Host is one node's VM networking. Open prepares the node once (the
// first link opens it otherwise); Veth and Tap link VMs; Close undoes
// what Open made. It is safe for concurrent use.
type Host struct {
	opt Options

	mu     sync.Mutex
	opened bool
	uplink netlink.Link // nil when the node has none
	dns    []string
	fw     *firewall.Firewall // nil without an uplink
}

// New returns a node's networking; nothing changes on the host before
// Open or the first link.
func New(opt Options) *Host {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	return &Host{opt: opt}
}

// Open prepares the node for its VMs' traffic, once: it finds the uplink,
// sets the sysctls forwarding needs, and removes what a dead agent of
// this node left (links, routes into the prefix, NDP proxy entries). An
// error leaves the node unopened; the next call tries again.
func (h *Host) Open() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open()
}

func (h *Host) open() error {
	if h.opened {
		return nil
	}
	log, prefix := h.opt.Log, h.opt.IPv6Prefix
	name := h.opt.Uplink
	if name == "" {
		var err error
		if name, err = DefaultUplink(); err != nil && prefix.IsValid() {
			return fmt.Errorf("network: --ipv6-prefix needs an uplink: %w", err)
		} else if err != nil {
			log.Warn("network: no uplink, VMs reach only this host", "err", err)
		}
	}
	var uplink netlink.Link
	if name != "" {
		var err error
		if uplink, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("network: uplink %s: %w", name, err)
		}
		if err := setSysctls(forwarding(name, prefix.IsValid()), name, log); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	n, err := cleanStale(uint64(h.opt.NodeSlot*SlotsPerNode), prefix, uplink)
	if err != nil {
		return fmt.Errorf("network: cleaning up after an earlier agent: %w", err)
	}
	if n > 0 {
		log.Info("network: removed what an earlier agent's VMs left", "links_routes_proxies", n)
	}
	if uplink != nil {
		// Its Open replaces a dead agent's table.
		if h.fw, err = firewall.Open(firewall.Options{Uplink: name, Log: log, Slot: h.opt.NodeSlot}); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	dns := h.opt.DNS
	if dns == nil {
		if dns, err = HostResolvers(); err != nil {
			log.Warn("network: the VMs get no DNS resolver", "err", err)
		}
	}
	h.dns = nil
	for _, a := range dns {
		h.dns = append(h.dns, a.String())
	}
	h.uplink, h.opened = uplink, true
	log.Info("network: ready", "uplink", name, "ipv6_prefix", prefix, "dns", h.dns)
	return nil
}

// Close deletes the node's firewall table (the sysctls stay as Open set
// them). The node's VMs should have ended before.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.opened = false
	if h.fw == nil {
		return nil
	}
	err := h.fw.Close()
	h.fw = nil
	return err
}

// Addressing returns the host and guest addresses of VM index n.
func (h *Host) Addressing(n uint64) *backend.Network {
	nw := privateAddressing(n)
	if p := h.opt.IPv6Prefix; p.IsValid() {
		sub := SubPrefix(p, n)
		host := sub.Addr().Next()
		nw.HostIPv6 = netip.PrefixFrom(host, SubPrefixBits).String()
		nw.GuestIPv6 = netip.PrefixFrom(host.Next(), SubPrefixBits).String()
	}
	return nw
}

// Link is the host end of a VM's link, with what the node made for it.
type Link struct {
	// Name is the host end's interface (fyS-N).
	Name string
	// Network is the VM's addressing and resolvers.
	Network *backend.Network

	h        *Host
	proxied  netip.Addr // the VM's address the uplink answers for
	filtered bool       // registered with the firewall
	once     sync.Once
}

// Veth links VM index n with a veth pair: the host end (fyS-N) gets the
// host addresses; the other end is eth0 in the VM's network namespace
// (netlink.NsFd or netlink.NsPid), where init configures the guest
// addresses. The firewall admits what fw says (its Internet,
// AllowedPorts and Forwards; the link and addresses are filled in).
func (h *Host) Veth(n uint64, vmNetns any, fw firewall.VM) (*Link, error) {
	name := LinkName(n)
	// The VM end is created directly inside the VM's namespace, named as
	// init expects when its configuration names no interface (eth0).
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: contract.DefaultInterface, PeerNamespace: vmNetns}
	return h.link(n, fw, func() error {
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth %s: %w", name, err)
		}
		return nil
	})
}

// Tap links VM index n with tap device fyS-N and returns the open tap (for
// QEMU's -netdev tap,fd=). The device goes away when the file is closed
// by everyone holding it, or with the Link's Remove. The firewall admits
// what fw says, as for Veth.
func (h *Host) Tap(n uint64, fw firewall.VM) (*Link, *os.File, error) {
	name := LinkName(n)
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		Queues:     1,
		NonPersist: true,
	}
	l, err := h.link(n, fw, func() error {
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("tap %s: %w", name, err)
		}
		if len(tap.Fds) != 1 {
			return fmt.Errorf("tap %s: no file descriptor", name)
		}
		return nil
	})
	if err != nil {
		for _, f := range tap.Fds {
			f.Close()
		}
		return nil, nil, err
	}
	return l, tap.Fds[0], nil
}

// link makes VM index n's link with add, gives its host end the host
// addresses, the uplink the NDP proxy entry and the firewall the VM's
// entry; on an error nothing of it is left.
func (h *Host) link(n uint64, fw firewall.VM, add func() error) (*Link, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.open(); err != nil {
		return nil, err
	}
	l := &Link{Name: LinkName(n), Network: h.Addressing(n), h: h}
	if fw.Internet {
		// A VM without internet could not reach them: it would only
		// wait for their answers.
		l.Network.DNS = h.dns
	}
	if old, err := netlink.LinkByName(l.Name); err == nil {
		netlink.LinkDel(old) // left over from a VM that is gone
	}
	if err := add(); err != nil {
		return nil, err
	}
	fail := func(err error) (*Link, error) {
		l.remove()
		return nil, fmt.Errorf("network of VM %s: %w", l.Name, err)
	}
	host, err := netlink.LinkByName(l.Name)
	if err != nil {
		return fail(err)
	}
	if err := configureHost(host, l.Network); err != nil {
		return fail(err)
	}
	if h.opt.IPv6Prefix.IsValid() && h.uplink != nil {
		guest := netip.MustParsePrefix(l.Network.GuestIPv6).Addr()
		if err := proxyNeighbour(h.uplink, guest, false); err != nil {
			return fail(err)
		}
		l.proxied = guest
	}
	if h.fw != nil {
		fw.Link = l.Name
		fw.IPv4 = netip.MustParsePrefix(l.Network.GuestIPv4).Addr()
		fw.IPv6 = netip.MustParsePrefix(l.Network.GuestIPv6).Addr()
		if err := h.fw.AddVM(fw); err != nil {
			return fail(err)
		}
		l.filtered = true
	}
	return l, nil
}

// Remove takes away what the node made for the link: the firewall's
// entry, the NDP proxy entry and the link itself (a veth pair goes with its host end; the
// sub-prefix's route with the address). It may be called more than once.
func (l *Link) Remove() error {
	var err error
	l.once.Do(func() {
		l.h.mu.Lock()
		defer l.h.mu.Unlock()
		err = l.remove()
	})
	return err
}

func (l *Link) remove() error {
	var errs []error
	if l.filtered && l.h.fw != nil {
		errs = append(errs, l.h.fw.RemoveVM(l.Name))
	}
	if l.proxied.IsValid() && l.h.uplink != nil {
		errs = append(errs, proxyNeighbour(l.h.uplink, l.proxied, true))
	}
	if old, err := netlink.LinkByName(l.Name); err == nil {
		if err := netlink.LinkDel(old); err != nil {
			errs = append(errs, fmt.Errorf("removing link %s: %w", l.Name, err))
		}
	}
	return errors.Join(errs...)
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
