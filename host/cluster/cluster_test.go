package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// testNode opens a node, closed with the test.
func testNode(t *testing.T, name, dir, addr string, capacity Capacity, join ...string) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Open(ctx, Options{Dir: dir, Name: name, Address: addr, Join: join, Capacity: capacity, Lease: time.Second})
	if err != nil {
		t.Fatalf("opening %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

// threeNodes starts a cluster of three and waits until all are voters.
func threeNodes(t *testing.T, capacity Capacity) []*Node {
	t.Helper()
	first := freeAddr(t)
	nodes := []*Node{testNode(t, "n1", t.TempDir(), first, capacity)}
	for _, name := range []string{"n2", "n3"} {
		nodes = append(nodes, testNode(t, name, t.TempDir(), freeAddr(t), capacity, first))
	}
	eventually(t, 30*time.Second, "three voters", func() bool {
		infos, err := nodes[0].Nodes(context.Background())
		if err != nil || len(infos) != 3 {
			return false
		}
		for _, ni := range infos {
			if ni.Role != "voter" {
				return false
			}
		}
		return true
	})
	return nodes
}

func eventually(t *testing.T, patience time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", patience, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Three nodes form a cluster of three voters, and a program deployed on
// one is known to the others.
func TestThreeNodesShareTheirPrograms(t *testing.T) {
	nodes := threeNodes(t, Capacity{VCPUs: 2, MemoryMiB: 1024})
	ctx := context.Background()
	if _, err := nodes[1].PutProgram(ctx, "hello", []byte(`{"code":{}}`), SourceAPI, false); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[2].PutProgram(ctx, "hello", []byte(`{"code":{}}`), SourceAPI, false); !errors.Is(err, ErrExists) {
		t.Fatalf("a second deploy of the same id: %v, want ErrExists", err)
	}
	slots := map[int]bool{}
	for _, n := range nodes {
		slots[n.Slot()] = true
	}
	if len(slots) != 3 {
		t.Errorf("the nodes' slots are not distinct: %d, %d, %d", nodes[0].Slot(), nodes[1].Slot(), nodes[2].Slot())
	}
	for _, n := range []*Node{nodes[0], nodes[2]} {
		progs, rev, err := n.Programs(ctx)
		if err != nil || len(progs) != 1 || progs[0].ID != "hello" || rev < 1 {
			t.Fatalf("%s sees %v at revision %d (%v)", n.Name(), progs, rev, err)
		}
	}
}

// A node restarted with its state directory has its programs back, and a
// directory of another node is refused with a clear error.
func TestRestartKeepsStateAndRefusesAnotherNodesDirectory(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Open(ctx, Options{Dir: dir, Name: "solo", Address: addr, Capacity: Capacity{VCPUs: 1, MemoryMiB: 512}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.PutProgram(ctx, "kept", []byte(`{}`), SourceAPI, false); err != nil {
		t.Fatal(err)
	}
	n.Close(ctx)
	again := testNode(t, "solo", dir, addr, Capacity{VCPUs: 1, MemoryMiB: 512})
	progs, _, err := again.Programs(ctx)
	if err != nil || len(progs) != 1 || progs[0].ID != "kept" {
		t.Fatalf("after a restart: %v (%v)", progs, err)
	}
	_, err = Open(ctx, Options{Dir: dir, Name: "solo", Address: freeAddr(t)})
	if err == nil || !strings.Contains(err.Error(), "belongs to another node") {
		t.Fatalf("a node opened on another node's directory: %v", err)
	}
}

// Bad cluster input: two nodes with one name, a join through an address
// nobody answers, an unwritable state directory.
func TestBadInputIsAClearError(t *testing.T) {
	first := freeAddr(t)
	testNode(t, "twin", t.TempDir(), first, Capacity{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Open(ctx, Options{Dir: t.TempDir(), Name: "twin", Address: freeAddr(t), Join: []string{first}})
	if !errors.Is(err, ErrNameTaken) {
		t.Errorf("a second node named twin: %v, want ErrNameTaken", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancelShort()
	_, err = Open(short, Options{Dir: t.TempDir(), Name: "lost", Address: freeAddr(t), Join: []string{freeAddr(t)}})
	if err == nil || !strings.Contains(err.Error(), "did not become ready") {
		t.Errorf("a join through an address nobody answers: %v", err)
	}
	// The state of a node of another cluster, asked to join this one.
	otherDir, otherAddr := t.TempDir(), freeAddr(t)
	other, err := Open(ctx, Options{Dir: otherDir, Name: "other", Address: otherAddr})
	if err != nil {
		t.Fatal(err)
	}
	other.Close(ctx)
	_, err = Open(ctx, Options{Dir: otherDir, Name: "other", Address: otherAddr, Join: []string{first}})
	if err == nil || !strings.Contains(err.Error(), "of another cluster") {
		t.Errorf("a state directory of another cluster: %v", err)
	}
	_, err = Open(ctx, Options{Dir: "/proc/ferry-state", Name: "ro", Address: freeAddr(t)})
	if err == nil || !strings.Contains(err.Error(), "state directory") {
		t.Errorf("an unusable state directory: %v", err)
	}
}

// The scheduler places a persistent program on one node; when that node
// stops renewing for a whole lease, the program moves with a higher token,
// the old owner's lease has run out by then, and a write with the old token
// is refused.
func TestTakeoverAfterAWholeLeaseWithAHigherToken(t *testing.T) {
	nodes := threeNodes(t, Capacity{VCPUs: 2, MemoryMiB: 1024})
	ctx := context.Background()
	byName := map[string]*Node{}
	for _, n := range nodes {
		byName[n.Name()] = n
	}
	sched := nodes[0].NewScheduler()
	want := []Want{{ID: "worker", VCPUs: 1, MemoryMiB: 128}}
	beat := func(except string) map[string]Lease {
		leases := map[string]Lease{}
		for _, n := range nodes {
			if n.Name() == except {
				continue
			}
			l, err := n.Heartbeat(ctx)
			if err != nil {
				t.Fatal(err)
			}
			leases[n.Name()] = l
		}
		return leases
	}
	beat("")
	placed, err := sched.Step(ctx, want)
	if err != nil || len(placed) != 1 || placed[0].Node == "" || placed[0].Token != 1 {
		t.Fatalf("placement: %+v %v", placed, err)
	}
	owner := placed[0].Node
	ownerLease := beat("")[owner]
	if ownerLease.Owned["worker"] != 1 {
		t.Fatalf("the owner's lease holds %v", ownerLease.Owned)
	}
	if err := byName[owner].KVPut(ctx, "worker", "k", []byte("v1"), 1); err != nil {
		t.Fatalf("the owner's write: %v", err)
	}
	// The owner stops renewing; the others go on.
	began := time.Now()
	var moved []Assignment
	eventually(t, 10*time.Second, "the program moved", func() bool {
		beat(owner)
		moved, err = sched.Step(ctx, want)
		return err == nil && moved[0].Node != owner && moved[0].Node != ""
	})
	took := time.Since(began)
	if took < nodes[0].Lease() {
		t.Errorf("taken over after %s, before a whole lease of %s", took, nodes[0].Lease())
	}
	if moved[0].Token != 2 {
		t.Errorf("token after the takeover: %d, want 2", moved[0].Token)
	}
	if ownerLease.Valid(time.Now()) {
		t.Errorf("the old owner's lease (until %s) still holds at the takeover", ownerLease.Until)
	}
	if err := byName[owner].KVPut(ctx, "worker", "k", []byte("stale"), 1); !errors.Is(err, ErrStaleToken) {
		t.Errorf("a write with the old token: %v, want ErrStaleToken", err)
	}
	if err := byName[moved[0].Node].KVPut(ctx, "worker", "k", []byte("v2"), 2); err != nil {
		t.Errorf("the new owner's write: %v", err)
	}
	if v, err := nodes[0].KVGet(ctx, "worker", "k"); err != nil || string(v) != "v2" {
		t.Errorf("value %q %v, want v2", v, err)
	}
	// The old owner learns at its next heartbeat that it lost the program.
	if l, err := byName[owner].Heartbeat(ctx); err != nil || len(l.Owned) != 0 {
		t.Errorf("the old owner's lease after the takeover: %+v %v", l, err)
	}
}

// Placement respects the declared capacity and spreads programs; what fits
// nowhere is reported, not placed.
func TestPlacementRespectsCapacity(t *testing.T) {
	nodes := threeNodes(t, Capacity{VCPUs: 4, MemoryMiB: 1024})
	ctx := context.Background()
	for _, n := range nodes {
		if _, err := n.Heartbeat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var want []Want
	for i := range 20 {
		want = append(want, Want{ID: fmt.Sprintf("p%02d", i), VCPUs: 0, MemoryMiB: 128})
	}
	want = append(want, Want{ID: "huge", VCPUs: 1, MemoryMiB: 4096})
	placed, err := nodes[0].NewScheduler().Step(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	for _, a := range placed {
		if a.Program == "huge" {
			if a.Node != "" || !strings.Contains(a.Problem, "4096 MiB") {
				t.Errorf("huge: %+v, want unplaced with the reason", a)
			}
			continue
		}
		if a.Node == "" {
			t.Errorf("%s not placed: %s", a.Program, a.Problem)
		}
		perNode[a.Node]++
	}
	for name, count := range perNode {
		if count*128 > 1024 {
			t.Errorf("%s carries %d programs of 128 MiB, over its 1024 MiB", name, count)
		}
	}
	if len(perNode) != 3 {
		t.Errorf("programs on %d nodes, want them spread over 3: %v", len(perNode), perNode)
	}
}

// Without a quorum a change is refused with ErrNoQuorum, in bounded time.
func TestNoQuorumRefusesChanges(t *testing.T) {
	nodes := threeNodes(t, Capacity{VCPUs: 1, MemoryMiB: 512})
	ctx := context.Background()
	for _, n := range nodes[1:] {
		n.closeOnce.Do(func() { n.halt() }) // gone without a handover
	}
	began := time.Now()
	_, err := nodes[0].PutProgram(ctx, "late", []byte(`{}`), SourceAPI, false)
	if !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("a deploy with 1 of 3 nodes: %v, want ErrNoQuorum", err)
	}
	t.Logf("refused after %s: %v", time.Since(began).Round(time.Millisecond), err)
	nodes[0].closeOnce.Do(func() { nodes[0].halt() }) // no quorum to hand over to
}
