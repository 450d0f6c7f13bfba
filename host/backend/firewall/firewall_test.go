package firewall

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
)

func TestValidate(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.200.0.2"), netip.MustParseAddr("fd00:f3:7:1::2")
	ok := VM{Link: "fy0-1", IPv4: v4, IPv6: v6, Internet: true,
		AllowedPorts: []Port{{"tcp", 22}, {"udp", 53}, {"tcp", 22}},
		Forwards:     []Forward{{"tcp", 2222, 22}, {"udp", 2222, 53}}}
	if err := validate(ok, "fy0-"); err != nil {
		t.Fatalf("valid VM: %v", err)
	}
	if err := validate(VM{Link: "fy0-2"}, "fy0-"); err != nil {
		t.Errorf("VM without addresses: %v", err)
	}
	many := make([]Port, maxPorts+1)
	for i := range many {
		many[i] = Port{"tcp", uint16(i + 1)}
	}
	for _, c := range []struct {
		name string
		edit func(*VM)
		want string
	}{
		{"no link", func(vm *VM) { vm.Link = "" }, "empty interface name"},
		{"long link", func(vm *VM) { vm.Link = "fy0123456789abcd" }, "longer than 15"},
		{"not Ferry's link", func(vm *VM) { vm.Link = "eth0" }, `start with "fy0-"`},
		{"another agent's link", func(vm *VM) { vm.Link = "fy1-1" }, `start with "fy0-"`},
		{"IPv6 as IPv4", func(vm *VM) { vm.IPv4 = v6 }, "not an IPv4"},
		{"IPv4 as IPv6", func(vm *VM) { vm.IPv6 = v4 }, "not an IPv6"},
		{"4in6", func(vm *VM) { vm.IPv6 = netip.MustParseAddr("::ffff:10.0.0.1") }, "not an IPv6"},
		{"unspecified", func(vm *VM) { vm.IPv4 = netip.IPv4Unspecified() }, "cannot be a VM's"},
		{"multicast", func(vm *VM) { vm.IPv6 = netip.MustParseAddr("ff02::1") }, "cannot be a VM's"},
		{"bad protocol", func(vm *VM) { vm.AllowedPorts = []Port{{"sctp", 80}} }, `protocol "sctp"`},
		{"port 0", func(vm *VM) { vm.AllowedPorts = []Port{{"tcp", 0}} }, "ports are 1-65535"},
		{"too many ports", func(vm *VM) { vm.AllowedPorts = many }, "more than 1024"},
		{"forward without IPv4", func(vm *VM) { vm.IPv4 = netip.Addr{} }, "need the VM's IPv4"},
		{"forward bad protocol", func(vm *VM) { vm.Forwards = []Forward{{"TCP", 80, 80}} }, `protocol "TCP"`},
		{"forward port 0", func(vm *VM) { vm.Forwards = []Forward{{"tcp", 80, 0}} }, "ports are 1-65535"},
		{"host port twice", func(vm *VM) { vm.Forwards = []Forward{{"tcp", 80, 80}, {"tcp", 80, 81}} }, "forwarded twice"},
	} {
		vm := ok
		c.edit(&vm)
		err := validate(vm, "fy0-")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error with %q", c.name, err, c.want)
		}
	}
}

func TestConflict(t *testing.T) {
	a := VM{Link: "fy1", IPv4: netip.MustParseAddr("10.200.0.2"), IPv6: netip.MustParseAddr("fd00::2"),
		Forwards: []Forward{{"tcp", 8000, 80}}}
	for _, c := range []struct {
		name string
		b    VM
		want string // "" for no conflict
	}{
		{"distinct", VM{Link: "fy2", IPv4: netip.MustParseAddr("10.200.0.6"), Forwards: []Forward{{"udp", 8000, 80}}}, ""},
		{"same IPv4", VM{Link: "fy2", IPv4: a.IPv4}, "address 10.200.0.2 is already fy1's"},
		{"same IPv6", VM{Link: "fy2", IPv6: a.IPv6}, "address fd00::2 is already fy1's"},
		{"same host port", VM{Link: "fy2", IPv4: netip.MustParseAddr("10.200.0.6"), Forwards: []Forward{{"tcp", 8000, 22}}}, "tcp/8000 already forwards to fy1"},
	} {
		err := conflict(c.b, a)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
}

// TestElements checks the key layout against what nft itself writes for
// these types (fields padded to 4 bytes, network byte order).
func TestElements(t *testing.T) {
	vm := VM{Link: "fy7", IPv4: netip.MustParseAddr("10.200.0.2"), IPv6: netip.MustParseAddr("fd00::2"), Internet: true,
		AllowedPorts: []Port{{"tcp", 443}, {"tcp", 443}}, Forwards: []Forward{{"udp", 5353, 53}}}
	got := elements(vm)
	link := append([]byte("fy7"), make([]byte, 13)...)
	want := [numSets][]nftables.SetElement{
		setEgress4:   {{Key: append(append([]byte{}, link...), 10, 200, 0, 2)}},
		setEgress6:   {{Key: append(append([]byte{}, link...), netip.MustParseAddr("fd00::2").AsSlice()...)}},
		setMasq4:     {{Key: []byte{10, 200, 0, 2}}},
		setAllowed4:  {{Key: []byte{10, 200, 0, 2, 6, 0, 0, 0, 1, 187, 0, 0}}},
		setAllowed6:  {{Key: append(netip.MustParseAddr("fd00::2").AsSlice(), 6, 0, 0, 0, 1, 187, 0, 0)}},
		setForwards4: {{Key: []byte{17, 0, 0, 0, 20, 233, 0, 0}, Val: []byte{10, 200, 0, 2, 0, 53, 0, 0}}},
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Errorf("set %s: %d elements; want %d", setSpecs[i].name, len(got[i]), len(want[i]))
			continue
		}
		for j := range want[i] {
			if !bytes.Equal(got[i][j].Key, want[i][j].Key) || !bytes.Equal(got[i][j].Val, want[i][j].Val) {
				t.Errorf("set %s element %d: %x:%x; want %x:%x", setSpecs[i].name, j, got[i][j].Key, got[i][j].Val, want[i][j].Key, want[i][j].Val)
			}
			if int(setSpecs[i].key.Bytes) != len(got[i][j].Key) {
				t.Errorf("set %s: key of %d bytes; the set's type has %d", setSpecs[i].name, len(got[i][j].Key), setSpecs[i].key.Bytes)
			}
		}
	}
	// Without Internet: no egress nor masquerade.
	vm.Internet = false
	got = elements(vm)
	for _, i := range []int{setEgress4, setEgress6, setMasq4} {
		if len(got[i]) != 0 {
			t.Errorf("set %s without Internet: %d elements", setSpecs[i].name, len(got[i]))
		}
	}
}

func TestDiff(t *testing.T) {
	e := func(k, v byte) nftables.SetElement { return nftables.SetElement{Key: []byte{k}, Val: []byte{v}} }
	del, add := diff([]nftables.SetElement{e(1, 1), e(2, 2), e(3, 3)}, []nftables.SetElement{e(2, 2), e(3, 4), e(5, 5)})
	str := func(l []nftables.SetElement) string {
		var b strings.Builder
		for _, x := range l {
			b.WriteString(string(rune('0'+x.Key[0])) + ":" + string(rune('0'+x.Val[0])) + " ")
		}
		return b.String()
	}
	if str(del) != "1:1 3:3 " || str(add) != "3:4 5:5 " {
		t.Errorf("diff: delete %q, add %q; want %q, %q", str(del), str(add), "1:1 3:3 ", "3:4 5:5 ")
	}
}
