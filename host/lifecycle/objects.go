package lifecycle

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/store"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Objects fetches the content-addressed objects a program names by ref
// (host/store.Store): the path of the cached object, pinned in the cache
// until release is called.
type Objects interface {
	Get(ctx context.Context, ref store.Ref) (path string, release func(), err error)
}

// Sources are what a program fetches from the store at each boot (the
// manifest's refs); the fetched objects stay pinned while its VM runs.
type Sources struct {
	// Code is the code's ref (Program.CodePath is empty then).
	Code store.Ref
	// Runtime is the root filesystem image's ref (qemu).
	Runtime store.Ref
	// Data is the input data's ref (Program.Data.Path is empty then).
	Data store.Ref
}

// ErrNoStore is the error of a boot that needs the store when the agent
// has none configured.
var ErrNoStore = errors.New("the program names objects by ref, but the agent has no store (--store URL)")

// resolve completes spec with how p's code is stored, and fetches p's
// refs and puts their paths into spec: the code, the runtime (for
// backends that boot root images), the data and immutable volumes. release unpins every object
// fetched; on error nothing stays pinned.
func (m *Manager) resolve(ctx context.Context, p *Program, spec *backend.Spec) (release func(), err error) {
	var releases []func()
	unpin := func() {
		for _, r := range releases {
			r()
		}
	}
	get := func(what string, ref store.Ref) (string, error) {
		if m.opt.Objects == nil {
			return "", fmt.Errorf("%s: %w", what, ErrNoStore)
		}
		path, rel, err := m.opt.Objects.Get(ctx, ref)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		releases = append(releases, rel)
		return path, nil
	}
	defer func() {
		if err != nil {
			unpin()
		}
	}()
	spec.CodeFile, spec.CodeEncoding = codeFile(p), p.CodeEncoding
	if p.Refs.Code != "" {
		if spec.CodePath, err = get("code", p.Refs.Code); err != nil {
			return nil, err
		}
	}
	if ri, ok := m.opt.Backend.(backend.RootImages); p.Refs.Runtime != "" && ok && ri.BootsRootImages() {
		if spec.Rootfs, err = get("runtime", p.Refs.Runtime); err != nil {
			return nil, err
		}
	}
	if p.Data != nil {
		d := *p.Data
		if p.Refs.Data != "" {
			if d.Path, err = get("data", p.Refs.Data); err != nil {
				return nil, err
			}
		}
		spec.Data = &d
	}
	spec.Volumes = append([]backend.Volume(nil), p.Volumes...)
	for i, v := range spec.Volumes {
		if v.Ref == "" {
			continue
		}
		ref, perr := store.ParseRef(v.Ref)
		if perr != nil {
			return nil, fmt.Errorf("volumes[%d]: %w", i, perr)
		}
		if spec.Volumes[i].Image, err = get(fmt.Sprintf("volumes[%d] (%s)", i, v.Mount), ref); err != nil {
			return nil, err
		}
	}
	return unpin, nil
}

// codeFile is the name a single code file has in the guest's code
// directory; packed code has none.
func codeFile(p *Program) string {
	if p.CodeEncoding != "" {
		return ""
	}
	return contract.FileName(p.Interface, p.Entrypoint)
}

// unpin releases the objects fetched for the instance's VM, once it has
// ended.
func (i *Instance) unpin() {
	if i.release != nil {
		i.release()
	}
}
