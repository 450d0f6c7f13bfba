// Package firewall owns Ferry's nftables table: the forwarding filter, the
// IPv4 masquerade and the port forwards of the VMs' links, through netlink
// (github.com/google/nftables; never the nft or iptables commands).
//
// # The table
//
// Everything lives in one table of the agent's own, family inet, named
// after its node slot: "ferry-S" (TableName). Open replaces any leftover
// one (a crashed agent's) with a fresh one in a single atomic batch, and
// in the same batch removes the single "ferry" table of agents before
// slots had tables, whose rules judged every fy* link; Close deletes it.
// No other table is read or changed. The agents of one machine (each has
// its own slot) each judge only their own links, fyS-N
// (NodeLinkPrefix), so their tables never disagree. The rules are fixed when the table is created;
// a VM only adds and removes elements of six named sets, so AddVM and
// RemoveVM are one atomic batch each, with no rule handles to track:
//
//	egress4, egress6     link . address of each VM that may reach the outside
//	masq4                IPv4 address of each such VM (masquerade)
//	allowed4, allowed6   address . protocol . port open to inbound traffic
//	forwards4            map: protocol . host port -> VM IPv4 . VM port
//
// Base chains, each with policy accept:
//
//	forward      filter, hook forward, priority filter (0)
//	  ct state established,related accept
//	  iifname "fyS-*" iifname . ip saddr != @egress4 drop
//	  iifname "fyS-*" iifname . ip6 saddr != @egress6 drop
//	  ip daddr . meta l4proto . th dport @allowed4 accept
//	  ip6 daddr . meta l4proto . th dport @allowed6 accept
//	  ct status dnat accept
//	  oifname "fyS-*" drop
//	prerouting   nat, hook prerouting, priority dstnat (-100)
//	  iifname UPLINK fib daddr type local
//	    dnat ip to meta l4proto . th dport map @forwards4
//	postrouting  nat, hook postrouting, priority srcnat (100)
//	  oifname UPLINK ip saddr @masq4 masquerade
//
// # What this means
//
//   - Only traffic that the agent's links (names starting with
//     NodeLinkPrefix, "fyS-", hostnet's naming) forward is judged;
//     everything else (another agent's links included: its own table
//     judges them) goes through the chains untouched. A link of the
//     agent's that was never registered with AddVM (or was removed)
//     forwards nothing either way: the default for a VM is closed.
//   - Replies (conntrack established or related, which includes ICMP errors
//     such as packet-too-big) always pass.
//   - A VM forwards new traffic only if it has Internet, and only from its
//     own addresses on its own link (a guest that spoofs another source is
//     dropped). It may then reach anything, including another VM's allowed
//     ports, but not its other ports.
//   - New traffic forwarded toward a VM's link is accepted only to an
//     allowed (address, protocol, port) of that VM, or when a port forward
//     DNATed it; the rest is dropped (ping included).
//   - IPv4 from an Internet VM leaving by the uplink is masqueraded to the
//     uplink's address; IPv6 is routed as it is (the VM's address is meant
//     to be routable).
//   - A port forward applies to IPv4 TCP or UDP arriving on the uplink for
//     one of the host's own addresses (fib daddr type local). Connections
//     the host itself opens to its forwarded ports (OUTPUT) and hairpin
//     traffic from the VMs are not forwarded.
//   - Traffic to and from the host itself (input, output) is not judged.
//   - Removing a VM stops new connections at once; connections already
//     established stay in conntrack until they end or the link goes away.
//
// # Caveats
//
// nftables runs every base chain of every table on a hook, and a packet
// passes only if all of them accept it: Ferry's accept does not override
// another table's drop. A host whose forward policy is drop (Docker sets
// iptables' FORWARD policy to drop) still drops the VMs' traffic until
// the operator admits the fy* links there too. Ferry never changes
// another table. The sysctls forwarding needs (net.ipv4.ip_forward,
// net.ipv6.conf.all.forwarding) are the caller's.
package firewall

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/google/nftables"
)

// TableName is the name of the table (family inet) of the agent in node
// slot slot.
func TableName(slot int) string { return fmt.Sprintf("ferry-%d", slot) }

// legacyTable is the one table of agents before node slots had tables:
// its rules judged every fy* link, so Open removes it.
const legacyTable = "ferry"

// LinkPrefix starts the name of every VM link Ferry creates.
const LinkPrefix = "fy"

// NodeLinkPrefix starts the names of the VM links of the agent in node
// slot slot (hostnet's fyS-N): traffic forwarded from or to such a link is
// judged by that agent's table.
func NodeLinkPrefix(slot int) string { return fmt.Sprintf("%s%d-", LinkPrefix, slot) }

// maxSlot bounds Options.Slot: a link name, fyS-N with N up to 4 digits,
// must fit the kernel's 15 bytes.
const maxSlot = 99999

// ErrClosed is returned by the methods of a Firewall after Close.
var ErrClosed = errors.New("firewall: closed")

// Options configure Open.
type Options struct {
	// Uplink is the host's interface to the outside: masquerade and port
	// forwards apply to it. Required.
	Uplink string
	// Log receives what Open and Close did and each VM's entry; nil
	// discards.
	Log *slog.Logger
	// NetNS, when not 0, is an open file descriptor of the network
	// namespace to work in (tests); the caller keeps it open until Close.
	NetNS int
	// Slot is the agent's node slot: the table is TableName(Slot) and
	// judges the links starting with NodeLinkPrefix(Slot).
	Slot int
}

// VM is what the firewall knows of one VM.
type VM struct {
	// Link is the host-side interface of the VM (fyN: a veth end or a tap).
	Link string
	// IPv4 and IPv6 are the guest's addresses; either may be the zero
	// Addr (no address of that family).
	IPv4, IPv6 netip.Addr
	// Internet lets the VM reach the outside: forwarding out (from its own
	// addresses) and IPv4 masquerade on the uplink.
	Internet bool
	// AllowedPorts are the only ports open to new inbound traffic to the
	// VM's addresses; the rest is dropped.
	AllowedPorts []Port
	// Forwards are IPv4 port forwards: the uplink's address:HostPort to
	// the VM's IPv4:VMPort. They need IPv4.
	Forwards []Forward
}

// Port is a transport protocol ("tcp" or "udp") and port.
type Port struct {
	Proto string
	Port  uint16
}

// Forward forwards HostPort on the host's uplink address to VMPort on the
// VM's IPv4 address, for protocol Proto ("tcp" or "udp").
type Forward struct {
	Proto            string
	HostPort, VMPort uint16
}

// Firewall is Ferry's table in one network namespace. Its methods are safe
// for concurrent use.
type Firewall struct {
	log        *slog.Logger
	uplink     string
	tableName  string
	linkPrefix string

	mu    sync.Mutex
	conn  *nftables.Conn // nil once closed
	table *nftables.Table
	sets  [numSets]*nftables.Set
	vms   map[string]VM // registered VMs, by link
}

// Open creates Ferry's table in the namespace, replacing a leftover one (a
// crashed agent's) in the same atomic batch, so that no VM of a previous
// run keeps any rule. Two Opens must not run at the same time in one
// process: the nftables library numbers new sets in a package variable.
func Open(opt Options) (*Firewall, error) {
	if err := checkIfname(opt.Uplink); err != nil {
		return nil, fmt.Errorf("firewall: uplink: %w", err)
	}
	if opt.Slot < 0 || opt.Slot > maxSlot {
		return nil, fmt.Errorf("firewall: node slot %d: want 0 to %d", opt.Slot, maxSlot)
	}
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(opt.NetNS), nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("firewall: netlink: %w", err)
	}
	f := &Firewall{log: log, uplink: opt.Uplink, tableName: TableName(opt.Slot), linkPrefix: NodeLinkPrefix(opt.Slot), conn: conn, vms: map[string]VM{}}
	leftover, err := f.hasTable(f.tableName)
	if err != nil {
		conn.CloseLasting()
		return nil, err
	}
	legacy, err := f.hasTable(legacyTable)
	if err != nil {
		conn.CloseLasting()
		return nil, err
	}
	if err := f.create(); err != nil {
		conn.CloseLasting()
		return nil, err
	}
	if leftover {
		log.Info("firewall: removed a leftover table (an agent that did not stop cleanly)", "table", f.tableName)
	}
	if legacy {
		log.Warn("firewall: removed the table of an older agent, which judged every fy* link", "table", legacyTable)
	}
	log.Info("firewall: table created", "table", f.tableName, "links", f.linkPrefix+"*", "uplink", opt.Uplink)
	return f, nil
}

// hasTable tells whether the inet table name exists.
func (f *Firewall) hasTable(name string) (bool, error) {
	tables, err := f.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("firewall: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// AddVM registers vm's rules, replacing any earlier entry for vm.Link, in
// one atomic batch: on error nothing changed.
func (f *Firewall) AddVM(vm VM) error {
	if err := validate(vm, f.linkPrefix); err != nil {
		return fmt.Errorf("firewall: %s: %w", vm.Link, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil {
		return ErrClosed
	}
	for link, other := range f.vms {
		if link == vm.Link {
			continue
		}
		if err := conflict(vm, other); err != nil {
			return fmt.Errorf("firewall: %s: %w", vm.Link, err)
		}
	}
	old := elements(f.vms[vm.Link]) // all empty for a new link
	next := elements(vm)
	for i, s := range f.sets {
		del, add := diff(old[i], next[i])
		if len(del) > 0 {
			if err := f.conn.SetDeleteElements(s, del); err != nil {
				return fmt.Errorf("firewall: %s: set %s: %w", vm.Link, s.Name, err)
			}
		}
		if len(add) > 0 {
			if err := f.conn.SetAddElements(s, add); err != nil {
				return fmt.Errorf("firewall: %s: set %s: %w", vm.Link, s.Name, err)
			}
		}
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("firewall: add %s: %w", vm.Link, err)
	}
	f.vms[vm.Link] = vm
	f.log.Debug("firewall: vm added", "link", vm.Link, "ipv4", vm.IPv4, "ipv6", vm.IPv6,
		"internet", vm.Internet, "allowed_ports", len(vm.AllowedPorts), "forwards", len(vm.Forwards))
	return nil
}

// RemoveVM removes the rules of the VM on link; an unknown link is not an
// error.
func (f *Firewall) RemoveVM(link string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil {
		return ErrClosed
	}
	vm, ok := f.vms[link]
	if !ok {
		return nil
	}
	for i, elems := range elements(vm) {
		if len(elems) > 0 {
			if err := f.conn.SetDeleteElements(f.sets[i], elems); err != nil {
				return fmt.Errorf("firewall: %s: set %s: %w", link, f.sets[i].Name, err)
			}
		}
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("firewall: remove %s: %w", link, err)
	}
	delete(f.vms, link)
	f.log.Debug("firewall: vm removed", "link", link)
	return nil
}

// Close deletes Ferry's table (and with it every VM's rules). Later calls
// do nothing.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil {
		return nil
	}
	// Adding the table first makes the deletion succeed even if someone
	// removed it already.
	f.conn.AddTable(f.table)
	f.conn.DelTable(f.table)
	err := f.conn.Flush()
	if cerr := f.conn.CloseLasting(); err == nil && cerr != nil {
		err = cerr
	}
	f.conn, f.vms = nil, nil
	if err != nil {
		return fmt.Errorf("firewall: delete table %s: %w", f.tableName, err)
	}
	f.log.Info("firewall: table deleted", "table", f.tableName)
	return nil
}
