package lifecycle

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/store"
)

// fakeObjects serves refs from a map and counts what is pinned.
type fakeObjects struct {
	paths  map[store.Ref]string
	pinned map[store.Ref]int
}

func (f *fakeObjects) Get(_ context.Context, ref store.Ref) (string, func(), error) {
	p, ok := f.paths[ref]
	if !ok {
		return "", nil, errors.New("not found")
	}
	f.pinned[ref]++
	return p, func() { f.pinned[ref]-- }, nil
}

// rootImages is a backend that boots root images (as qemu does).
type rootImages struct{ backend.Backend }

func (rootImages) BootsRootImages() bool { return true }

func ref(c byte) store.Ref { return store.Ref(strings.Repeat(string(c), 64)) }

func TestResolveFetchesAndPinsEveryRef(t *testing.T) {
	objs := &fakeObjects{paths: map[store.Ref]string{ref('a'): "/c/code", ref('b'): "/c/root", ref('c'): "/c/data", ref('d'): "/c/vol"}, pinned: map[store.Ref]int{}}
	m := &Manager{opt: Options{Objects: objs, Backend: rootImages{}}}
	p := &Program{ID: "p", Refs: Sources{Code: ref('a'), Runtime: ref('b'), Data: ref('c')},
		Data:    &backend.Data{Encoding: "zip"},
		Volumes: []backend.Volume{{Mount: "/v", Ref: string(ref('d'))}, {Mount: "/s", Persistent: true, SizeMiB: 1}}}
	var spec backend.Spec
	release, err := m.resolve(context.Background(), p, &spec)
	if err != nil {
		t.Fatal(err)
	}
	if spec.CodePath != "/c/code" || spec.Rootfs != "/c/root" || spec.Data.Path != "/c/data" || spec.Volumes[0].Image != "/c/vol" || spec.Volumes[1].Image != "" {
		t.Fatalf("spec %+v", spec)
	}
	if p.Volumes[0].Image != "" || p.Data.Path != "" {
		t.Fatal("resolve changed the program")
	}
	for r, n := range objs.pinned {
		if n != 1 {
			t.Fatalf("%s pinned %d times", r.Short(), n)
		}
	}
	release()
	for r, n := range objs.pinned {
		if n != 0 {
			t.Fatalf("%s still pinned %d times", r.Short(), n)
		}
	}

	// A backend with a root of its own fetches no runtime.
	m.opt.Backend = nil
	if release, err := m.resolve(context.Background(), p, &spec); err != nil || objs.pinned[ref('b')] != 0 {
		t.Fatalf("runtime fetched for a backend without root images: %v", err)
	} else {
		release()
	}
	m.opt.Backend = rootImages{}

	// A missing ref: the error names it, nothing stays pinned.
	p.Volumes[0].Ref = string(ref('e'))
	if _, err := m.resolve(context.Background(), p, &backend.Spec{}); err == nil || !strings.Contains(err.Error(), "volumes[0] (/v): not found") {
		t.Fatalf("missing ref: %v", err)
	}
	for r, n := range objs.pinned {
		if n != 0 {
			t.Fatalf("%s pinned %d times after a failed resolve", r.Short(), n)
		}
	}
	// Without a store, a program with refs cannot boot.
	m.opt.Objects = nil
	if _, err := m.resolve(context.Background(), p, &backend.Spec{}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("no store: %v", err)
	}
}
