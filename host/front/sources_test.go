package front

import (
	"testing"

	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
)

// A persistent volume reaches the backend with its name, or the
// manifest's default (volumeI) without one: the name of its image, which
// must not change between versions.
func TestPersistentVolumesGetTheirImageName(t *testing.T) {
	m := &manifest.Program{Volumes: []manifest.Volume{
		{Mount: "/scratch", Ephemeral: true, SizeMiB: 8},
		{Mount: "/a", Persistent: true, SizeMiB: 8},
		{Mount: "/b", Persistence: "host", Name: "state", SizeMiB: 8},
	}}
	var p lifecycle.Program
	programSources(&p, m)
	var names []string
	for _, v := range p.Volumes {
		names = append(names, v.Name)
	}
	if len(names) != 3 || names[0] != "" || names[1] != "volume1" || names[2] != "state" || !p.Volumes[2].Persistent {
		t.Fatalf("volume names %q (%+v)", names, p.Volumes)
	}
}
