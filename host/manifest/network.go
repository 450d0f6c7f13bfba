package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Environment is what the VM gets from the host: its network.
//
// A VM gets a network interface (a veth pair in the sandbox, a tap device
// under QEMU) with IPv4 and IPv6 addresses when it asks for any of the
// three: Internet, AllowedPorts or PortForwards. Only Internet lets it
// reach the outside (IPv4 through NAT, IPv6 through its routed address);
// AllowedPorts and PortForwards only let the outside reach it, and it
// answers them.
type Environment struct {
	// Internet lets the VM reach the outside.
	Internet bool `json:"internet,omitempty"`
	// AllowedPorts are the ports of the VM's addresses the outside may
	// connect to; every other inbound packet is dropped. In JSON each is
	// a number (a TCP port) or {"port": N, "protocol": "tcp"|"udp"}.
	AllowedPorts []Port `json:"allowed_ports,omitempty"`
	// PortForwards carry connections to a port of the host's uplink
	// IPv4 address to a port of the VM's IPv4 address.
	PortForwards []PortForward `json:"port_forwards,omitempty"`
	// Reproducible, AlephAPI and SharedCache are fields of an Aleph
	// PROGRAM message's environment, accepted and ignored.
	Reproducible bool `json:"reproducible,omitempty"`
	AlephAPI     bool `json:"aleph_api,omitempty"`
	SharedCache  bool `json:"shared_cache,omitempty"`
}

// Interface reports whether the VM gets a network interface.
func (e Environment) Interface() bool {
	return e.Internet || len(e.AllowedPorts) > 0 || len(e.PortForwards) > 0
}

// Transport protocols of ports.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Port is a TCP or UDP port.
type Port struct {
	Port int `json:"port"`
	// Protocol is TCP (the default when empty) or UDP.
	Protocol string `json:"protocol,omitempty"`
}

// Proto returns the port's protocol, TCP when the manifest names none.
func (p Port) Proto() string { return protoOrTCP(p.Protocol) }

// UnmarshalJSON reads a port as a plain number (TCP) or as an object.
func (p *Port) UnmarshalJSON(b []byte) error {
	var n json.Number
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&n); err == nil {
		v, err := n.Int64()
		if err != nil {
			return fmt.Errorf("port %s is not a whole number", n)
		}
		*p = Port{Port: int(v), Protocol: TCP}
		return nil
	}
	type plain Port // without this method
	dec = json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var v plain
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("a port is a number or {\"port\": N, \"protocol\": \"tcp\"|\"udp\"}: %w", err)
	}
	*p = Port(v)
	return nil
}

// PortForward forwards a port of the host's uplink IPv4 address to a port
// of the VM's IPv4 address.
type PortForward struct {
	HostPort int `json:"host_port"`
	Port     int `json:"port"` // the VM's
	// Protocol is TCP (the default when empty) or UDP.
	Protocol string `json:"protocol,omitempty"`
}

// Proto returns the forward's protocol, TCP when the manifest names none.
func (f PortForward) Proto() string { return protoOrTCP(f.Protocol) }

func protoOrTCP(p string) string {
	if p == "" {
		return TCP
	}
	return p
}

// validate checks the ports; field is the environment's field name.
func (e Environment) validate(field string) error {
	seen := map[Port]bool{}
	for i, p := range e.AllowedPorts {
		at := fmt.Sprintf("%s.allowed_ports[%d]", field, i)
		if err := checkPort(at, p.Port, p.Protocol); err != nil {
			return err
		}
		key := Port{p.Port, p.Proto()}
		if seen[key] {
			return &FieldError{at, fmt.Sprintf("%s port %d is listed twice", key.Protocol, p.Port)}
		}
		seen[key] = true
	}
	hosts := map[Port]bool{}
	for i, f := range e.PortForwards {
		at := fmt.Sprintf("%s.port_forwards[%d]", field, i)
		if err := checkPort(at+".host_port", f.HostPort, f.Protocol); err != nil {
			return err
		}
		if err := checkPort(at+".port", f.Port, f.Protocol); err != nil {
			return err
		}
		key := Port{f.HostPort, f.Proto()}
		if hosts[key] {
			return &FieldError{at + ".host_port", fmt.Sprintf("%s host port %d is forwarded twice", key.Protocol, f.HostPort)}
		}
		hosts[key] = true
	}
	return nil
}

// checkPort checks a port number and its protocol.
func checkPort(field string, port int, proto string) error {
	if port < 1 || port > 65535 {
		return &FieldError{field, fmt.Sprintf("%d is not a port (1-65535)", port)}
	}
	switch proto {
	case "", TCP, UDP:
		return nil
	}
	return &FieldError{field, fmt.Sprintf("protocol %q is not tcp or udp", proto)}
}

// uniqueHostPorts checks that no two programs forward the same host port
// (ids in order, for a stable error).
func uniqueHostPorts(programs map[string]*Program, ids []string) error {
	owner := map[Port]string{}
	for _, id := range ids {
		for i, f := range programs[id].Environment.PortForwards {
			key := Port{f.HostPort, f.Proto()}
			if other, taken := owner[key]; taken {
				return &FieldError{fmt.Sprintf("programs.%s.environment.port_forwards[%d].host_port", id, i),
					fmt.Sprintf("%s host port %d is already forwarded to program %s", key.Protocol, f.HostPort, other)}
			}
			owner[key] = id
		}
	}
	return nil
}
