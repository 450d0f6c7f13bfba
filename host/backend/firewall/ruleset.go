package firewall

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The sets, by index into Firewall.sets and elements' result.
const (
	setEgress4 = iota
	setEgress6
	setMasq4
	setAllowed4
	setAllowed6
	setForwards4
	numSets
)

// setSpecs describes the sets (see the package comment).
var setSpecs = [numSets]struct {
	name      string
	key, data nftables.SetDatatype // data only for maps
}{
	setEgress4:   {name: "egress4", key: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)},
	setEgress6:   {name: "egress6", key: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIP6Addr)},
	setMasq4:     {name: "masq4", key: nftables.TypeIPAddr},
	setAllowed4:  {name: "allowed4", key: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)},
	setAllowed6:  {name: "allowed6", key: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)},
	setForwards4: {name: "forwards4", key: nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), data: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)},
}

// ipsDstNAT is conntrack's IPS_DST_NAT status bit (linux/netfilter/
// nf_conntrack_common.h): the connection's destination was translated.
const ipsDstNAT = 1 << 5

// Registers: a concatenation is loaded into consecutive 32-bit registers
// (NFT_REG32_00 onwards), each field padded to 4 bytes, as nft does.
func reg32(n uint32) uint32 { return unix.NFT_REG32_00 + n }

// create queues and flushes, in one batch, the replacement of any table of
// that name and family by a fresh one with its sets and rules, and the
// removal of the legacy table.
func (f *Firewall) create() error {
	c := f.conn
	legacy := &nftables.Table{Name: legacyTable, Family: nftables.TableFamilyINet}
	c.AddTable(legacy)
	c.DelTable(legacy)
	f.table = &nftables.Table{Name: f.tableName, Family: nftables.TableFamilyINet}
	// Add (a no-op if it exists), delete, add again: a leftover table
	// goes and a fresh one comes in the same transaction.
	c.AddTable(f.table)
	c.DelTable(f.table)
	c.AddTable(f.table)
	for i, spec := range setSpecs {
		s := &nftables.Set{
			Table:         f.table,
			Name:          spec.name,
			KeyType:       spec.key,
			Concatenation: len(nftables.ConcatSetTypeElements(spec.key)) > 1,
		}
		if spec.data.Bytes > 0 {
			s.IsMap, s.DataType = true, spec.data
		}
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("firewall: set %s: %w", spec.name, err)
		}
		f.sets[i] = s
	}
	accept := nftables.ChainPolicyAccept
	forward := c.AddChain(&nftables.Chain{Name: "forward", Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	prerouting := c.AddChain(&nftables.Chain{Name: "prerouting", Table: f.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	postrouting := c.AddChain(&nftables.Chain{Name: "postrouting", Table: f.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	for _, r := range f.forwardRules() {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: forward, Exprs: r})
	}
	c.AddRule(&nftables.Rule{Table: f.table, Chain: prerouting, Exprs: f.dnatRule()})
	c.AddRule(&nftables.Rule{Table: f.table, Chain: postrouting, Exprs: f.masqueradeRule()})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: create table %s: %w", f.tableName, err)
	}
	return nil
}

// forwardRules are the forward chain's rules, in order.
func (f *Firewall) forwardRules() [][]expr.Any {
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	return [][]expr.Any{
		// ct state established,related accept
		cat(ctBits(unix.NFT_CT_STATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept),
		// meta nfproto ipv4 iifname "fyS-*" iifname . ip saddr != @egress4 drop
		cat(nfproto(unix.NFPROTO_IPV4), ifPrefix(expr.MetaKeyIIFNAME, f.linkPrefix),
			payload(expr.PayloadBaseNetworkHeader, 12, 4, reg32(4)),
			notIn(f.sets[setEgress4]), drop),
		// meta nfproto ipv6 iifname "fyS-*" iifname . ip6 saddr != @egress6 drop
		cat(nfproto(unix.NFPROTO_IPV6), ifPrefix(expr.MetaKeyIIFNAME, f.linkPrefix),
			payload(expr.PayloadBaseNetworkHeader, 8, 16, reg32(4)),
			notIn(f.sets[setEgress6]), drop),
		// ip daddr . meta l4proto . th dport @allowed4 accept
		cat(nfproto(unix.NFPROTO_IPV4),
			payload(expr.PayloadBaseNetworkHeader, 16, 4, reg32(0)),
			meta(expr.MetaKeyL4PROTO, reg32(1)),
			payload(expr.PayloadBaseTransportHeader, 2, 2, reg32(2)),
			lookup(f.sets[setAllowed4]), accept),
		// ip6 daddr . meta l4proto . th dport @allowed6 accept
		cat(nfproto(unix.NFPROTO_IPV6),
			payload(expr.PayloadBaseNetworkHeader, 24, 16, reg32(0)),
			meta(expr.MetaKeyL4PROTO, reg32(4)),
			payload(expr.PayloadBaseTransportHeader, 2, 2, reg32(5)),
			lookup(f.sets[setAllowed6]), accept),
		// ct status dnat accept
		cat(ctBits(unix.NFT_CT_STATUS, ipsDstNAT), accept),
		// oifname "fyS-*" drop
		cat(ifPrefix(expr.MetaKeyOIFNAME, f.linkPrefix), drop),
	}
}

// dnatRule: iifname UPLINK meta nfproto ipv4 fib daddr type local
// dnat ip to meta l4proto . th dport map @forwards4.
func (f *Firewall) dnatRule() []expr.Any {
	return cat(
		ifname(expr.MetaKeyIIFNAME, f.uplink),
		nfproto(unix.NFPROTO_IPV4),
		[]expr.Any{
			&expr.Fib{Register: reg32(0), FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg32(0), Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			meta(expr.MetaKeyL4PROTO, reg32(0)),
			payload(expr.PayloadBaseTransportHeader, 2, 2, reg32(1)),
			&expr.Lookup{SourceRegister: reg32(0), DestRegister: reg32(0), IsDestRegSet: true,
				SetName: f.sets[setForwards4].Name, SetID: f.sets[setForwards4].ID},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
				RegAddrMin: reg32(0), RegProtoMin: reg32(1), Specified: true},
		})
}

// masqueradeRule: oifname UPLINK meta nfproto ipv4 ip saddr @masq4
// masquerade.
func (f *Firewall) masqueradeRule() []expr.Any {
	return cat(
		ifname(expr.MetaKeyOIFNAME, f.uplink),
		nfproto(unix.NFPROTO_IPV4),
		[]expr.Any{
			payload(expr.PayloadBaseNetworkHeader, 12, 4, reg32(0)),
			lookup(f.sets[setMasq4]),
			&expr.Masq{},
		})
}

// cat joins expressions and lists of them into one rule.
func cat(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch p := p.(type) {
		case []expr.Any:
			out = append(out, p...)
		case expr.Any:
			out = append(out, p)
		default:
			panic(fmt.Sprintf("firewall: cat: %T", p))
		}
	}
	return out
}

func meta(key expr.MetaKey, reg uint32) expr.Any { return &expr.Meta{Key: key, Register: reg} }

func payload(base expr.PayloadBase, offset, n, reg uint32) expr.Any {
	return &expr.Payload{OperationType: expr.PayloadLoad, Base: base, Offset: offset, Len: n, DestRegister: reg}
}

func lookup(s *nftables.Set) expr.Any {
	return &expr.Lookup{SourceRegister: reg32(0), SetName: s.Name, SetID: s.ID}
}

func notIn(s *nftables.Set) expr.Any {
	return &expr.Lookup{SourceRegister: reg32(0), SetName: s.Name, SetID: s.ID, Invert: true}
}

// nfproto matches the packet's family (in an inet table).
func nfproto(proto byte) []expr.Any {
	return []expr.Any{meta(expr.MetaKeyNFPROTO, reg32(0)), &expr.Cmp{Op: expr.CmpOpEq, Register: reg32(0), Data: []byte{proto}}}
}

// ifPrefix loads the interface name (16 bytes, into registers 0-3) and
// matches prefix as nft's "fy0-*" does: comparing only its bytes.
func ifPrefix(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{meta(key, reg32(0)), &expr.Cmp{Op: expr.CmpOpEq, Register: reg32(0), Data: []byte(prefix)}}
}

// ifname matches the interface name exactly (with its terminating NUL).
func ifname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{meta(key, reg32(0)), &expr.Cmp{Op: expr.CmpOpEq, Register: reg32(0), Data: []byte(name + "\x00")}}
}

// ctBits matches a conntrack key (state, status) having any of bits.
func ctBits(key uint32, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKey(key), Register: reg32(0)},
		&expr.Bitwise{SourceRegister: reg32(0), DestRegister: reg32(0), Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg32(0), Data: make([]byte, 4)},
	}
}
