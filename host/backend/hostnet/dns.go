package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// Where HostResolvers looks: the host's resolv.conf, then, when it names
// only loopback resolvers (systemd-resolved's stub at 127.0.0.53, which a
// VM cannot reach), the one listing systemd-resolved's upstream servers.
var resolvConfs = []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"}

// HostResolvers returns the host's DNS resolvers that a VM can reach (not
// loopback ones), from the first of resolvConfs that names any.
func HostResolvers() ([]netip.Addr, error) {
	return resolversFrom(resolvConfs)
}

// resolversFrom returns the reachable resolvers of the first file that
// names any.
func resolversFrom(files []string) ([]netip.Addr, error) {
	var errs []error
	for _, f := range files {
		conf, err := dns.ClientConfigFromFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var out []netip.Addr
		for _, s := range conf.Servers {
			a, err := netip.ParseAddr(s)
			if err == nil && !a.Unmap().IsLoopback() && a.Zone() == "" {
				out = append(out, a.Unmap())
			}
		}
		if len(out) > 0 {
			return out, nil
		}
		errs = append(errs, fmt.Errorf("%s names no resolver a VM can reach (loopback ones are skipped)", f))
	}
	return nil, fmt.Errorf("no DNS resolver for the VMs (name them with --dns): %w", errors.Join(errs...))
}

// ParseDNS reads --dns: IP addresses separated by commas.
func ParseDNS(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%q is not an IP address", f)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}
