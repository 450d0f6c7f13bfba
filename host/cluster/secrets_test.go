package cluster

import (
	"bytes"
	"context"
	"testing"
)

// The forwarding key is made once, by the first node that asks, and every
// node reads the same; each node's public address is recorded by name.
func TestForwardKeyAndPublicAddresses(t *testing.T) {
	first := freeAddr(t)
	a := testNode(t, "a", t.TempDir(), first, Capacity{})
	b := testNode(t, "b", t.TempDir(), freeAddr(t), Capacity{}, first)
	ctx := context.Background()
	keyA, err := a.ForwardKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.ForwardKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keyB, err := b.ForwardKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keyA) != ForwardKeySize || bytes.Equal(keyA, make([]byte, ForwardKeySize)) || !bytes.Equal(keyA, again) || !bytes.Equal(keyA, keyB) {
		t.Fatalf("keys %x, %x (again), %x (b): want one random key of %d bytes", keyA, again, keyB, ForwardKeySize)
	}
	if err := a.Advertise(ctx, "192.0.2.1:8080"); err != nil {
		t.Fatal(err)
	}
	public, err := b.PublicAddresses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(public) != 1 || public["a"] != "192.0.2.1:8080" {
		t.Fatalf("public addresses %v, want a's alone", public)
	}
}
