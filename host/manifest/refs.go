package manifest

// What a manifest may fetch from the content-addressed store (code,
// runtime, data, immutable volumes), how code and data are encoded, the
// three kinds of volumes, and the fields of an Aleph PROGRAM message's
// content this agent accepts without using them.

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"

	"github.com/ferry-vm/ferry/host/store"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// Packed code encodings (EncodingPlain and EncodingDirectory are in
// manifest.go): the names of an Aleph PROGRAM message's code.encoding.
const (
	EncodingZip      = "zip"
	EncodingSquashfs = "squashfs"
)

// InterfaceBinary is the reference's name for an executable program.
const InterfaceBinary = "binary"

// StoreRef names an object in the content-addressed store, as an Aleph
// PROGRAM message does: Ref is its sha256 digest (64 hex digits,
// optionally prefixed "sha256:", see store.ParseRef). UseLatest must be
// false: a digest has no later version. Comment is free text.
type StoreRef struct {
	Ref       string `json:"ref,omitempty"`
	UseLatest bool   `json:"use_latest,omitempty"`
	Comment   string `json:"comment,omitempty"`
}

// Digest returns the normalised ref ("" when none).
func (r StoreRef) Digest() store.Ref {
	d, _ := store.ParseRef(r.Ref)
	return d
}

// check validates the ref at field (a prefix such as programs.a.code).
func (r StoreRef) check(field string) error {
	if r.UseLatest {
		return &FieldError{field + ".use_latest", "not supported: a ref is the digest of its content and has no later version"}
	}
	if r.Ref == "" {
		return nil
	}
	if _, err := store.ParseRef(r.Ref); err != nil {
		return &FieldError{field + ".ref", err.Error()}
	}
	return nil
}

// source checks an object given by a path on this host or by this ref:
// exactly one of them, missing reported at missingField.
func (r StoreRef) source(field, path, missingField, missing string) error {
	if err := r.check(field); err != nil {
		return err
	}
	switch {
	case path == "" && r.Ref == "":
		return &FieldError{missingField, missing}
	case path != "" && r.Ref != "":
		return &FieldError{field, "give path or ref, not both"}
	}
	return nil
}

// Data is the program's input data, unpacked in the VM at /data before
// the program starts: a zip archive (extracted) or a squashfs image
// (mounted read-only), by ref or by a path on this host.
type Data struct {
	Encoding string `json:"encoding"`
	// Mount is where the data appears: /data (the default; the reference
	// runtime always uses it).
	Mount string `json:"mount,omitempty"`
	Path  string `json:"path,omitempty"`
	StoreRef
}

// DataMount is where the data is in the VM.
const DataMount = "/data"

// AlephFields are the fields of an Aleph PROGRAM message's content that
// say nothing this agent acts on (who owns the program, when it was
// posted, amendments, payment, what to export when it ends): a real
// message's content is a valid manifest, and these are ignored.
type AlephFields struct {
	Type         string          `json:"type,omitempty"`
	Address      string          `json:"address,omitempty"`
	Time         json.Number     `json:"time,omitempty"`
	AllowAmend   bool            `json:"allow_amend,omitempty"`
	Replaces     string          `json:"replaces,omitempty"`
	Metadata     json.RawMessage `json:"metadata,omitempty"`
	Export       json.RawMessage `json:"export,omitempty"`
	Payment      json.RawMessage `json:"payment,omitempty"`
	Requirements json.RawMessage `json:"requirements,omitempty"`
}

// RunInterface returns the contract's interface of the code: asgi when
// the manifest names none, executable for binary.
func (c Code) RunInterface() string {
	switch c.Interface {
	case "":
		return contract.InterfaceASGI
	case InterfaceBinary:
		return contract.InterfaceExecutable
	}
	return c.Interface
}

// volumeName is what a persistent volume's name may be: it names a file.
var volumeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// MaxVolumeMiB bounds a persistent or ephemeral volume's size (1 TiB).
const MaxVolumeMiB = 1 << 20

// validateCode checks the code's interface, entrypoint, encoding and
// source (a path or a ref).
func validateCode(field func(string) string, c *Code) error {
	switch c.Interface {
	case "", contract.InterfaceASGI, contract.InterfaceExecutable, InterfaceBinary:
	default:
		return &FieldError{field("code.interface"), fmt.Sprintf("%q is not asgi, executable or binary", c.Interface)}
	}
	if c.Entrypoint == "" {
		return &FieldError{field("code.entrypoint"), "required"}
	}
	if err := c.StoreRef.source(field("code"), c.Path, field("code.path"), "required: the program's directory, or its single file, on this host; or code.ref, its digest in the store"); err != nil {
		return err
	}
	switch c.Encoding {
	case EncodingPlain, EncodingZip, EncodingSquashfs:
	case "", EncodingDirectory:
		if c.Ref != "" {
			return &FieldError{field("code.encoding"), "required with a ref: plain (one file), zip or squashfs"}
		}
	default:
		return &FieldError{field("code.encoding"), fmt.Sprintf("%q is not plain, zip or squashfs", c.Encoding)}
	}
	return nil
}

// validateSources checks the runtime, data and volumes.
func validateSources(field func(string) string, p *Program) error {
	if p.Runtime != nil {
		if err := p.Runtime.StoreRef.check(field("runtime")); err != nil {
			return err
		}
		if p.Runtime.Ref != "" && p.Runtime.Rootfs != "" {
			return &FieldError{field("runtime"), "give rootfs or ref, not both"}
		}
	}
	mounts := map[string]string{contract.DefaultCodeDir: "code"}
	if d := p.Data; d != nil {
		if err := d.StoreRef.source(field("data"), d.Path, field("data"), "needs a ref (or a path on this host)"); err != nil {
			return err
		}
		switch d.Encoding {
		case EncodingZip, EncodingSquashfs:
		default:
			return &FieldError{field("data.encoding"), fmt.Sprintf("%q is not zip or squashfs", d.Encoding)}
		}
		if d.Mount != "" && d.Mount != DataMount {
			return &FieldError{field("data.mount"), "data is always at " + DataMount + " in the VM"}
		}
		mounts[DataMount] = "data"
	}
	persistent := map[string]int{} // a persistent volume's image file name, to its index
	for i, v := range p.Volumes {
		vf := fmt.Sprintf("%s[%d]", field("volumes"), i)
		if err := v.validate(vf, mounts); err != nil {
			return err
		}
		if v.Kind() != "persistent" {
			continue
		}
		// The backends name the image by ImageName: two volumes on one
		// image would mount one ext4 filesystem twice, read-write, and
		// corrupt it.
		name := v.ImageName(i)
		if j, taken := persistent[name]; taken {
			return &FieldError{vf + ".name", fmt.Sprintf("%q is already the name of volumes[%d]: each persistent volume needs its own", name, j)}
		}
		persistent[name] = i
	}
	return nil
}

// ImageName is the name of the persistent volume that is a program's
// i-th volume: its Name, or volumeI when it has none. It names the
// volume's image on the host, kept across boots and deploys: changing it
// would lose the data of volumes without a name.
func (v Volume) ImageName(i int) string {
	if v.Name != "" {
		return v.Name
	}
	return fmt.Sprintf("volume%d", i)
}

// Kind says what kind of volume v is: "immutable", "persistent" or
// "ephemeral".
func (v Volume) Kind() string {
	switch {
	case v.Persistent || v.Persistence != "":
		return "persistent"
	case v.Ephemeral:
		return "ephemeral"
	}
	return "immutable"
}

func (v Volume) validate(field string, mounts map[string]string) error {
	if v.Mount == "" || !path.IsAbs(v.Mount) || path.Clean(v.Mount) != v.Mount || v.Mount == "/" {
		return &FieldError{field + ".mount", "a clean absolute path (not /) is required"}
	}
	if other, taken := mounts[v.Mount]; taken {
		return &FieldError{field + ".mount", fmt.Sprintf("%s is already the %s's mount point", v.Mount, other)}
	}
	mounts[v.Mount] = "volume at " + v.Mount
	if err := v.StoreRef.check(field); err != nil {
		return err
	}
	kinds := 0
	for _, is := range []bool{v.Persistent || v.Persistence != "", v.Ephemeral, v.Ref != "" || v.Immutable != ""} {
		if is {
			kinds++
		}
	}
	if kinds != 1 {
		return &FieldError{field, "a volume is exactly one of: immutable (ref, or immutable: an image path), persistent (persistent: true or persistence: \"host\", with name and size_mib) or ephemeral (ephemeral: true, with size_mib)"}
	}
	sized := func() error {
		if v.SizeMiB <= 0 || v.SizeMiB > MaxVolumeMiB {
			return &FieldError{field + ".size_mib", fmt.Sprintf("a %s volume needs a size in MiB from 1 to %d, got %d", v.Kind(), MaxVolumeMiB, v.SizeMiB)}
		}
		return nil
	}
	switch v.Kind() {
	case "persistent":
		if v.Persistence != "" && v.Persistence != "host" {
			return &FieldError{field + ".persistence", fmt.Sprintf("%q is not supported: volumes persist on this host (\"host\")", v.Persistence)}
		}
		if v.Name != "" && !volumeName.MatchString(v.Name) {
			return &FieldError{field + ".name", fmt.Sprintf("%q is not a volume name (letters, digits, '_', '.', '-', at most 64)", v.Name)}
		}
		return sized()
	case "ephemeral":
		return sized()
	}
	if v.Ref != "" && v.Immutable != "" {
		return &FieldError{field, "give ref or immutable (a path), not both"}
	}
	if v.SizeMiB != 0 {
		return &FieldError{field + ".size_mib", "an immutable volume's size is its image's"}
	}
	return nil
}

// hostPaths returns the manifest's paths on this host, which a
// configuration file may give relative to itself, by field.
func (p *Program) hostPaths() map[string]*string {
	out := map[string]*string{}
	add := func(field string, s *string) {
		if *s != "" {
			out[field] = s
		}
	}
	add("code.path", &p.Code.Path)
	if p.Data != nil {
		add("data.path", &p.Data.Path)
	}
	for i := range p.Volumes {
		add(fmt.Sprintf("volumes[%d].immutable", i), &p.Volumes[i].Immutable)
	}
	if p.Rootfs != nil {
		add("rootfs.parent.path", &p.Rootfs.Parent.Path)
	}
	return out
}

// RelativePath returns the field of a path on this host the manifest
// gives relative ("" when all are absolute), for callers without a base
// directory (a deploy over the admin API).
func (p *Program) RelativePath() string {
	var fields []string
	for field, s := range p.hostPaths() {
		if !path.IsAbs(*s) {
			fields = append(fields, field)
		}
	}
	if len(fields) == 0 {
		return ""
	}
	sort.Strings(fields)
	return fields[0]
}
