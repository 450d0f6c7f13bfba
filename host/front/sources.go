package front

import (
	"github.com/ferry-vm/ferry/host/backend"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// programSources sets what a validated manifest says about the program's
// code, runtime, data and volumes: paths on this host, or refs the
// manager fetches from the store at each boot.
func programSources(prog *lifecycle.Program, m *manifest.Program) {
	prog.Interface = m.Code.RunInterface()
	prog.CodePath = m.Code.Path
	prog.Refs.Code = m.Code.Digest()
	switch m.Code.Encoding {
	case manifest.EncodingZip:
		prog.CodeEncoding = contract.EncodingZip
	case manifest.EncodingSquashfs:
		prog.CodeEncoding = contract.EncodingSquashfs
	}
	if m.Runtime != nil {
		prog.Refs.Runtime = m.Runtime.Digest()
	}
	if d := m.Data; d != nil {
		prog.Data = &backend.Data{Path: d.Path, Encoding: d.Encoding}
		prog.Refs.Data = d.Digest()
	}
	for i, v := range m.Volumes {
		bv := backend.Volume{Mount: v.Mount, Image: v.Immutable, Persistent: v.Kind() == "persistent", Ephemeral: v.Ephemeral, Name: v.Name, SizeMiB: v.SizeMiB}
		if bv.Persistent {
			bv.Name = v.ImageName(i)
		}
		if v.Ref != "" {
			bv.Ref = string(v.Digest())
		}
		prog.Volumes = append(prog.Volumes, bv)
	}
}
