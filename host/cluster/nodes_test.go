package cluster

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A node's IPv6 prefix is recorded; another node's that overlaps it is
// refused with a clear error, one beside it is not.
func TestNodePrefixesDoNotOverlap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, first := t.TempDir(), freeAddr(t)
	open := func(name, dir, addr, prefix string, join ...string) (*Node, error) {
		n, err := Open(ctx, Options{Dir: dir, Name: name, Address: addr, Join: join, Lease: time.Second, IPv6Prefix: netip.MustParsePrefix(prefix)})
		if err == nil {
			t.Cleanup(func() { n.Close(context.Background()) })
		}
		return n, err
	}
	n1, err := open("n1", dir, first, "2001:db8:1::/64")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open("n3", t.TempDir(), freeAddr(t), "2001:db8:2::/64", first); err != nil {
		t.Fatalf("a prefix beside n1's: %v", err)
	}
	infos, err := n1.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, ni := range infos {
		got[ni.Name] = ni.IPv6Prefix
	}
	if got["n1"] != "2001:db8:1::/64" || got["n3"] != "2001:db8:2::/64" {
		t.Errorf("recorded prefixes %v", got)
	}
	// Last: a node refused after it joined stays a (dead) member, as one
	// with a taken name does.
	_, err = open("n2", t.TempDir(), freeAddr(t), "2001:db8::/32", first)
	if !errors.Is(err, ErrPrefixOverlap) || !strings.Contains(err.Error(), "2001:db8:1::/64 of node n1") {
		t.Errorf("an overlapping prefix: %v, want ErrPrefixOverlap", err)
	}
}

// A state directory of an agent whose nodes table had no ipv6_prefix
// column gets it at the next start.
func TestMigrationAddsTheColumnToAnOldState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, addr := t.TempDir(), freeAddr(t)
	n, err := Open(ctx, Options{Dir: dir, Name: "old", Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.db.ExecContext(ctx, `ALTER TABLE nodes DROP COLUMN ipv6_prefix`); err != nil {
		t.Fatal(err)
	}
	n.Close(ctx)
	again, err := Open(ctx, Options{Dir: dir, Name: "old", Address: addr, IPv6Prefix: netip.MustParsePrefix("2001:db8:5::/64")})
	if err != nil {
		t.Fatalf("reopening an old state: %v", err)
	}
	defer again.Close(ctx)
	infos, err := again.Nodes(ctx)
	if err != nil || len(infos) != 1 || infos[0].IPv6Prefix != "2001:db8:5::/64" {
		t.Fatalf("after the migration: %+v %v", infos, err)
	}
}
