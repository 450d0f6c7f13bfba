package catalog

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// newCatalog is a catalog over a one-node cluster and a front whose VMs
// are fakes.
func newCatalog(t *testing.T) *Catalog {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, err := cluster.Open(ctx, cluster.Options{Dir: t.TempDir(), Name: "solo", Address: freeAddr(t),
		Capacity: cluster.Capacity{VCPUs: 2, MemoryMiB: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close(context.Background()) })
	mgr := lifecycle.New(lifecycle.Options{Backend: &backendtest.Backend{}, InitPath: "/nonexistent/init", IdleTimeout: -1})
	t.Cleanup(mgr.Close)
	programs := front.NewPrograms(mgr)
	programs.ClusterPersists = true
	return New(node, programs, nil)
}

func program(persistent bool, memory int) *manifest.Program {
	return &manifest.Program{Code: manifest.Code{Interface: "asgi", Entrypoint: "main:app", Path: "/srv/app"},
		Resources: manifest.Resources{VCPUs: 1, Memory: memory}, On: manifest.On{HTTP: true, Persistent: persistent}}
}

// The file's programs reach the front; deploys and deletes go through the
// cluster and reach it too; a duplicate id and a persistent program no node
// can hold are refused; Wanted lists the persistent ones with their
// resources.
func TestCatalogKeepsTheFrontInStepWithTheCluster(t *testing.T) {
	c := newCatalog(t)
	var changed []string
	c.Changed = func(id string) { changed = append(changed, id) }
	ctx := context.Background()
	if err := c.LoadFile(ctx, map[string]*manifest.Program{"web": program(false, 0), "worker": program(true, 256)}); err != nil {
		t.Fatal(err)
	}
	if ids := c.Programs.IDs(); strings.Join(ids, ",") != "web,worker" {
		t.Fatalf("front has %v", ids)
	}
	if w := c.Wanted(); len(w) != 1 || w[0] != (cluster.Want{ID: "worker", VCPUs: 1, MemoryMiB: 256}) {
		t.Errorf("wanted %+v", w)
	}
	if err := c.Deploy(ctx, "web", program(false, 0)); !errors.Is(err, front.ErrExists) {
		t.Errorf("a duplicate deploy: %v", err)
	}
	err := c.Deploy(ctx, "huge", program(true, 4096))
	if ferr, ok := errors.AsType[*manifest.FieldError](err); !ok || ferr.Field != "resources" {
		t.Errorf("an unplaceable persistent program: %v", err)
	}
	if err := c.Deploy(ctx, "api", program(false, 0)); err != nil {
		t.Fatal(err)
	}
	if c.Programs.Route("api") == nil {
		t.Error("a deploy is not applied at once")
	}
	// The file's program changes at the next start: redeployed, and told.
	if err := c.LoadFile(ctx, map[string]*manifest.Program{"worker": program(true, 512)}); err != nil {
		t.Fatal(err)
	}
	if got := c.Programs.Route("worker").Program.MemoryMiB; got != 512 || strings.Join(changed, ",") != "worker" {
		t.Errorf("after the change: memory %d, changed %v", got, changed)
	}
	if err := c.Delete(ctx, "api"); err != nil {
		t.Fatal(err)
	}
	if c.Programs.Route("api") != nil {
		t.Error("a deleted program is still routed")
	}
	if err := c.Delete(ctx, "api"); !errors.Is(err, front.ErrNotFound) {
		t.Errorf("deleting it again: %v", err)
	}
}
