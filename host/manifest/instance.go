package manifest

import (
	"fmt"
)

// Kinds of manifest (Program.Kind). The reference tells them apart by its
// message's type (PROGRAM, INSTANCE); here a manifest says it in "kind".
const (
	// KindProgram, the default, is code the agent runs: an ASGI app or
	// an executable, on HTTP requests or persistently.
	KindProgram = "program"
	// KindInstance is a VM with no app, after the reference's INSTANCE
	// message: an image booted with the user's SSH keys, reached at its
	// own address, always running (persistent), its root and volumes kept
	// across boots when they say so (README "Instances").
	KindInstance = "instance"
)

// Rootfs is an instance's root filesystem, shaped after the rootfs of
// the reference's INSTANCE message: the image it starts from and whether
// what is written to it is kept.
type Rootfs struct {
	Parent RootfsParent `json:"parent,omitzero"`
	// Persistence is PersistenceHost (what is written to the root is
	// kept on this host from one boot to the next, on a disk of SizeMiB)
	// or empty (written to memory, gone at each stop).
	Persistence string `json:"persistence,omitempty"`
	SizeMiB     int    `json:"size_mib,omitempty"`
}

// RootfsParent is the image an instance boots.
type RootfsParent struct {
	// Path is a root image on this host, squashfs or a clean ext4 with
	// Ferry's init as /sbin/init (rootfs/README.md, "The image
	// contract"); relative paths are relative to the configuration file.
	// Empty: the backend's image (make rootfs), which has sshd.
	Path string `json:"path,omitempty"`
	// Ref names the image by its hash in the reference's storage: not
	// supported by this agent yet.
	Ref string `json:"ref,omitempty"`
	// UseLatest is the reference's flag for following amended images;
	// accepted and meaningless for a path.
	UseLatest bool `json:"use_latest,omitempty"`
}

// PersistenceHost keeps a root or volume on the host that runs it, as the
// reference's "host" persistence does.
const PersistenceHost = "host"

// IsInstance reports whether the manifest is an instance's.
func (p *Program) IsInstance() bool { return p.Kind == KindInstance }

// Persistent reports whether the program runs all the time (on.persistent,
// or an instance, which always does).
func (p *Program) Persistent() bool { return p.On.Persistent || p.IsInstance() }

// RootSizeMiB is the size of the disk that keeps an instance's root
// across boots; 0: its root is not kept.
func (p *Program) RootSizeMiB() int {
	if p.Rootfs == nil || p.Rootfs.Persistence != PersistenceHost {
		return 0
	}
	return p.Rootfs.SizeMiB
}

// validateKind checks the kind and what only one kind may have.
func validateKind(field func(string) string, p *Program) error {
	switch p.Kind {
	case "", KindProgram:
		if p.Rootfs != nil {
			return &FieldError{field("rootfs"), "only an instance (kind instance) has a rootfs: a program's image is runtime.rootfs"}
		}
		return nil
	case KindInstance:
		return validateInstance(field, p)
	}
	return &FieldError{field("kind"), fmt.Sprintf("%q is not %s or %s", p.Kind, KindProgram, KindInstance)}
}

// validateInstance checks what differs for an instance: no code, no HTTP,
// its rootfs and keys.
func validateInstance(field func(string) string, p *Program) error {
	if p.Code != (Code{}) {
		return &FieldError{field("code"), "an instance runs no code: leave code out (kind instance boots an image with sshd)"}
	}
	if r := p.Runtime; r != nil {
		switch {
		case r.Rootfs != "":
			return &FieldError{field("runtime.rootfs"), "an instance's image is rootfs.parent.path"}
		case r.Python != "":
			return &FieldError{field("runtime.python"), "an instance runs no Python app"}
		}
	}
	if p.On.HTTP {
		return &FieldError{field("on.http"), "an instance serves no HTTP through the agent: it is reached at its own address (environment.allowed_ports)"}
	}
	if len(p.AuthorizedKeys) == 0 {
		return &FieldError{field("authorized_keys"), "an instance needs at least one SSH key: SSH is how it is reached"}
	}
	if r := p.Rootfs; r != nil {
		if r.Parent.Ref != "" {
			return &FieldError{field("rootfs.parent.ref"), "images by reference are not supported by this agent: give rootfs.parent.path, or leave parent out for the agent's image"}
		}
		switch r.Persistence {
		case PersistenceHost:
			if r.SizeMiB <= 0 || r.SizeMiB > MaxVolumeMiB {
				return &FieldError{field("rootfs.size_mib"), fmt.Sprintf("a persistent root needs a size in MiB from 1 to %d for the disk that keeps it, got %d", MaxVolumeMiB, r.SizeMiB)}
			}
		case "":
			if r.SizeMiB != 0 {
				return &FieldError{field("rootfs.size_mib"), `a size is for a persistent root: add "persistence": "host"`}
			}
		default:
			return &FieldError{field("rootfs.persistence"), fmt.Sprintf("%q is not supported: %q (kept on this host) or empty (not kept)", r.Persistence, PersistenceHost)}
		}
	}
	return nil
}
