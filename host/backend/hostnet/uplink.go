package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultUplink returns the interface of the default route (IPv4's, else
// IPv6's) in the caller's network namespace.
func DefaultUplink() (string, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return "", fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if r.LinkIndex == 0 || (r.Dst != nil && !isDefault(r.Dst)) {
				continue
			}
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("the default route's interface: %w", err)
			}
			return link.Attrs().Name, nil
		}
	}
	return "", errors.New("no default route: name the uplink with --uplink")
}

// isDefault reports a route destination of length 0.
func isDefault(dst *net.IPNet) bool {
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// sysctl is one kernel setting the agent needs.
type sysctl struct{ path, value string }

// forwarding are the settings a node that forwards its VMs' traffic
// needs: IPv4 and IPv6 forwarding, and with a routed prefix the uplink
// answering neighbour solicitations for the VMs' addresses (proxy_ndp).
func forwarding(uplink string, proxyNDP bool) []sysctl {
	s := []sysctl{{"net/ipv4/ip_forward", "1"}, {"net/ipv6/conf/all/forwarding", "1"}}
	if proxyNDP {
		s = append(s, sysctl{"net/ipv6/conf/" + uplink + "/proxy_ndp", "1"})
	}
	return s
}

// setSysctls writes the settings in the caller's network namespace,
// logging each one it changes, and warns when IPv6 forwarding makes the
// uplink ignore router advertisements.
func setSysctls(settings []sysctl, uplink string, log *slog.Logger) error {
	for _, s := range settings {
		path := filepath.Join("/proc/sys", s.path)
		old, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", s.path, err)
		}
		if strings.TrimSpace(string(old)) == s.value {
			continue
		}
		if err := os.WriteFile(path, []byte(s.value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", s.path, s.value, err)
		}
		log.Info("network: sysctl set", "name", strings.ReplaceAll(s.path, "/", "."), "was", strings.TrimSpace(string(old)), "now", s.value)
	}
	if ra, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv6/conf", uplink, "accept_ra")); err == nil && strings.TrimSpace(string(ra)) == "1" {
		log.Warn("network: with IPv6 forwarding on, the uplink ignores router advertisements unless its accept_ra is 2; set net.ipv6.conf."+uplink+".accept_ra=2 if they configure it", "uplink", uplink)
	}
	return nil
}

// proxyNeighbour makes the uplink answer neighbour solicitations for addr
// (an NDP proxy entry), or with del removes the entry.
func proxyNeighbour(uplink netlink.Link, addr netip.Addr, del bool) error {
	n := &netlink.Neigh{LinkIndex: uplink.Attrs().Index, Family: netlink.FAMILY_V6, Flags: netlink.NTF_PROXY, IP: addr.AsSlice()}
	if del {
		if err := netlink.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing the NDP proxy entry for %s on %s: %w", addr, uplink.Attrs().Name, err)
		}
		return nil
	}
	if err := netlink.NeighSet(n); err != nil {
		return fmt.Errorf("NDP proxy entry for %s on %s: %w", addr, uplink.Attrs().Name, err)
	}
	return nil
}

// cleanStale removes what VMs of a dead agent of this node may have left
// in the caller's namespace: its links (the names of the VM indexes
// first to first+SlotsPerNode-1), the routes into the node's prefix on
// other interfaces than the uplink, and the NDP proxy entries for
// addresses of the prefix on the uplink. It returns how many it removed.
func cleanStale(first uint64, prefix netip.Prefix, uplink netlink.Link) (int, error) {
	removed := 0
	var errs []error
	for n := first; n < first+SlotsPerNode; n++ {
		if l, err := netlink.LinkByName(LinkName(n)); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("removing stale link %s: %w", l.Attrs().Name, err))
				continue
			}
			removed++
		}
	}
	if !prefix.IsValid() {
		return removed, errors.Join(errs...)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing routes: %w", err))
	}
	for _, r := range routes {
		if r.Dst == nil || (uplink != nil && r.LinkIndex == uplink.Attrs().Index) || !within(prefix, r.Dst) {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("removing stale route %s: %w", r.Dst, err))
			continue
		}
		removed++
	}
	if uplink == nil {
		return removed, errors.Join(errs...)
	}
	proxies, err := netlink.NeighProxyList(uplink.Attrs().Index, netlink.FAMILY_V6)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing NDP proxy entries: %w", err))
	}
	for _, n := range proxies {
		addr, ok := netip.AddrFromSlice(n.IP)
		if !ok || !prefix.Contains(addr.Unmap()) {
			continue
		}
		if err := proxyNeighbour(uplink, addr.Unmap(), true); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// within reports whether dst is a part of prefix, more specific than it
// (the routes of the VMs' sub-prefixes, not an operator's route for all of it).
func within(prefix netip.Prefix, dst *net.IPNet) bool {
	a, ok := netip.AddrFromSlice(dst.IP)
	ones, _ := dst.Mask.Size()
	return ok && ones > prefix.Bits() && prefix.Contains(a.Unmap())
}
