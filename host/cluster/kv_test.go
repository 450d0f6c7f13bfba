package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// A key written with a TTL is gone for readers as soon as it expires, and
// its row is deleted by the sweep; a key rewritten without one stays.
func TestKVExpiry(t *testing.T) {
	n := testNode(t, "solo", t.TempDir(), freeAddr(t), Capacity{VCPUs: 1, MemoryMiB: 512})
	ctx := context.Background()
	if err := n.KVSet(ctx, "app", "short", []byte("v"), KVWrite{TTL: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := n.KVSet(ctx, "app", "kept", []byte("v"), KVWrite{TTL: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := n.KVSet(ctx, "app", "kept", []byte("v2"), KVWrite{}); err != nil {
		t.Fatal(err)
	}
	if v, err := n.KVGet(ctx, "app", "short"); err != nil || string(v) != "v" {
		t.Fatalf("before expiry: %q, %v", v, err)
	}
	entries, _, err := n.KVList(ctx, "app", "", "", 10)
	if err != nil || len(entries) != 2 || entries[1].Key != "short" || entries[1].Expires.IsZero() || !entries[0].Expires.IsZero() {
		t.Fatalf("listing before expiry: %+v, %v", entries, err)
	}
	time.Sleep(400 * time.Millisecond)
	if _, err := n.KVGet(ctx, "app", "short"); !errors.Is(err, ErrNoKey) {
		t.Fatalf("an expired key read: %v, want ErrNoKey", err)
	}
	if err := n.KVDelete(ctx, "app", "short", 0); !errors.Is(err, ErrNoKey) {
		t.Fatalf("an expired key deleted: %v, want ErrNoKey", err)
	}
	if entries, _, err := n.KVList(ctx, "app", "", "", 10); err != nil || len(entries) != 1 || entries[0].Key != "kept" {
		t.Fatalf("listing after expiry: %+v, %v", entries, err)
	}
	if u, err := n.KVUsage(ctx, "app"); err != nil || u.Keys != 1 || u.Bytes != int64(len("kept")+2) {
		t.Fatalf("usage after expiry: %+v, %v", u, err)
	}
	if count, err := n.ExpireKeys(ctx); err != nil || count != 1 {
		t.Fatalf("sweep: %d keys, %v; want 1", count, err)
	}
	if v, err := n.KVGet(ctx, "app", "kept"); err != nil || string(v) != "v2" {
		t.Fatalf("a key rewritten without a TTL: %q, %v", v, err)
	}
}

// Listing returns a program's keys under a prefix in order, a page at a
// time, and never another program's.
func TestKVListByPrefix(t *testing.T) {
	n := testNode(t, "solo", t.TempDir(), freeAddr(t), Capacity{VCPUs: 1, MemoryMiB: 512})
	ctx := context.Background()
	for _, k := range []string{"user:3", "user:1", "user:2", "users", "user", "video:1", "usex"} {
		if err := n.KVPut(ctx, "app", k, []byte(k), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.KVPut(ctx, "other", "user:9", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	var got []string
	after := ""
	for page := 0; ; page++ {
		entries, more, err := n.KVList(ctx, "app", "user:", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			got = append(got, e.Key)
			if e.Size != len(e.Key) {
				t.Errorf("%s: size %d, want %d", e.Key, e.Size, len(e.Key))
			}
		}
		if !more {
			break
		}
		if page > 3 {
			t.Fatal("listing does not end")
		}
		after = entries[len(entries)-1].Key
	}
	if want := []string{"user:1", "user:2", "user:3"}; !slices.Equal(got, want) {
		t.Fatalf("keys under user: %v, want %v", got, want)
	}
	all, more, err := n.KVList(ctx, "app", "", "", 100)
	if err != nil || more || len(all) != 7 {
		t.Fatalf("all keys: %+v, more %v, %v", all, more, err)
	}
	if _, _, err := n.KVList(ctx, "app", "", "", 0); err == nil {
		t.Fatal("a listing of 0 keys was accepted")
	}
}

// The quota is checked in the write's transaction: keys and bytes, a
// rewrite of a key counted once, expired keys not at all.
func TestKVQuota(t *testing.T) {
	n := testNode(t, "solo", t.TempDir(), freeAddr(t), Capacity{VCPUs: 1, MemoryMiB: 512})
	ctx := context.Background()
	q := Quota{Keys: 3, Bytes: 40}
	for i := range 3 {
		if err := n.KVSet(ctx, "app", fmt.Sprintf("k%d", i), []byte("0123456789"), KVWrite{Quota: q}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.KVSet(ctx, "app", "k3", []byte("x"), KVWrite{Quota: q}); !errors.Is(err, ErrQuota) {
		t.Fatalf("a fourth key: %v, want ErrQuota", err)
	}
	if err := n.KVSet(ctx, "app", "k0", []byte("0123456789"), KVWrite{Quota: q}); err != nil {
		t.Fatalf("rewriting a key at the quota: %v", err)
	}
	// 3 keys of 2+10 bytes = 36; k0 at 2+15 = 41 > 40.
	if err := n.KVSet(ctx, "app", "k0", []byte("012345678901234"), KVWrite{Quota: q}); !errors.Is(err, ErrQuota) {
		t.Fatalf("a value past the bytes: %v, want ErrQuota", err)
	}
	if err := n.KVSet(ctx, "other", "k3", []byte("x"), KVWrite{Quota: q}); err != nil {
		t.Fatalf("another program's quota is its own: %v", err)
	}
	if err := n.KVSet(ctx, "app", "k2", []byte("x"), KVWrite{Quota: q, TTL: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := n.KVSet(ctx, "app", "k3", []byte("x"), KVWrite{Quota: q}); err != nil {
		t.Fatalf("a key in the place of an expired one: %v", err)
	}
	if err := n.KVSet(ctx, "app", "big", make([]byte, MaxValue+1), KVWrite{}); err == nil {
		t.Fatal("a value past MaxValue was stored")
	}
}

// A state directory made before keys expired (no expires column) is
// upgraded when the node opens it, its keys kept.
func TestKVMigratesAnOldSchema(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	ctx := context.Background()
	n := testNode(t, "solo", dir, addr, Capacity{VCPUs: 1, MemoryMiB: 512})
	for _, stmt := range []string{`DROP INDEX kv_expires`, `DROP TABLE kv`,
		`CREATE TABLE kv (program TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (program, key))`,
		`INSERT INTO kv (program, key, value) VALUES ('app', 'old', 'kept')`} {
		if _, err := n.db.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	n.Close(ctx) // before the test's end: the directory opens again
	again := testNode(t, "solo", dir, addr, Capacity{VCPUs: 1, MemoryMiB: 512})
	if v, err := again.KVGet(ctx, "app", "old"); err != nil || string(v) != "kept" {
		t.Fatalf("a key of the old schema: %q, %v", v, err)
	}
	if err := again.KVSet(ctx, "app", "new", []byte("v"), KVWrite{TTL: time.Hour}); err != nil {
		t.Fatalf("a write with a TTL after the migration: %v", err)
	}
}

// A program that stopped being persistent (its assignment ended, the row
// kept for its token) writes again as an on-demand program, without a
// token; while it is placed, a write without its token is refused.
func TestKVWritesOfAProgramNoLongerPersistent(t *testing.T) {
	n := testNode(t, "solo", t.TempDir(), freeAddr(t), Capacity{VCPUs: 2, MemoryMiB: 1024})
	ctx := context.Background()
	if _, err := n.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	sched := n.NewScheduler()
	placed, err := sched.Step(ctx, []Want{{ID: "app", VCPUs: 1, MemoryMiB: 128}})
	if err != nil || len(placed) != 1 || placed[0].Node != "solo" {
		t.Fatalf("placement: %+v %v", placed, err)
	}
	if err := n.KVPut(ctx, "app", "k", []byte("v"), 0); !errors.Is(err, ErrStaleToken) {
		t.Fatalf("a write without the token of a placed program: %v, want ErrStaleToken", err)
	}
	// Redeployed on demand: the scheduler no longer wants it.
	if _, err := sched.Step(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := n.KVPut(ctx, "app", "k", []byte("v"), 0); err != nil {
		t.Fatalf("a write of the program now on demand: %v", err)
	}
	if err := n.KVDelete(ctx, "app", "k", 0); err != nil {
		t.Fatalf("a delete of the program now on demand: %v", err)
	}
	if err := n.KVPut(ctx, "app", "k", []byte("v"), 1); !errors.Is(err, ErrStaleToken) {
		t.Fatalf("a write with the token of its ended assignment: %v, want ErrStaleToken", err)
	}
}

// Writes that race are checked against the quota one after the other:
// however many run at once, the program never holds more than its keys.
func TestKVQuotaUnderConcurrentWrites(t *testing.T) {
	n := testNode(t, "solo", t.TempDir(), freeAddr(t), Capacity{VCPUs: 1, MemoryMiB: 512})
	ctx := context.Background()
	q := Quota{Keys: 5, Bytes: 1 << 20}
	errs := make(chan error, 40)
	for i := range cap(errs) {
		go func() {
			errs <- n.KVSet(ctx, "app", fmt.Sprintf("k%02d", i), []byte("v"), KVWrite{Quota: q})
		}()
	}
	stored := 0
	for range cap(errs) {
		err := <-errs
		switch {
		case err == nil:
			stored++
		case !errors.Is(err, ErrQuota):
			t.Errorf("a racing write: %v", err)
		}
	}
	if u, err := n.KVUsage(ctx, "app"); err != nil || u.Keys != 5 || stored != 5 {
		t.Fatalf("%d writes succeeded, the program holds %+v (%v); want 5", stored, u, err)
	}
}
