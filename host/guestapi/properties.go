package guestapi

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/ferry-vm/ferry/host/lifecycle"
)

// Properties is the answer of GET /v1/properties.
type Properties struct {
	Program    string    `json:"program"`
	Node       string    `json:"node"`
	Addresses  Addresses `json:"addresses"`
	Resources  Resources `json:"resources"`
	Persistent bool      `json:"persistent"`
	// FencingToken is a persistent program's token of this boot (absent
	// for others).
	FencingToken int64 `json:"fencing_token,omitempty"`
}

// Addresses are a VM's addresses, without prefix length (empty: none).
type Addresses struct {
	IPv4 string `json:"ipv4,omitempty"`
	IPv6 string `json:"ipv6,omitempty"`
}

// Resources are what a VM was given (0: the backend's default).
type Resources struct {
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memory_mib"`
}

func (h *handler) properties(w http.ResponseWriter, _ *http.Request) {
	c := h.c
	writeJSON(w, http.StatusOK, Properties{Program: c.Program, Node: c.Node,
		Addresses:  Addresses{IPv4: c.IPv4, IPv6: c.IPv6},
		Resources:  Resources{VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB},
		Persistent: c.Persistent, FencingToken: h.token()})
}

// FencingTokenEnv is the environment variable a persistent program's
// token of this boot is in.
const FencingTokenEnv = "FERRY_FENCING_TOKEN"

// CallerOf is the Caller of a VM of the lifecycle manager on node.
func CallerOf(inst *lifecycle.Instance, node string) Caller {
	p := inst.Program
	c := Caller{Program: p.ID, Node: node, VCPUs: p.VCPUs, MemoryMiB: p.MemoryMiB, Persistent: p.Persistent}
	if p.Persistent {
		c.FencingToken, _ = strconv.ParseInt(p.Env[FencingTokenEnv], 10, 64)
	}
	if inst.VM != nil {
		if n := inst.VM.Network(); n != nil {
			c.IPv4, c.IPv6 = bare(n.GuestIPv4), bare(n.GuestIPv6)
		}
	}
	return c
}

// bare is an address without its prefix length.
func bare(cidr string) string {
	addr, _, _ := strings.Cut(cidr, "/")
	return addr
}
