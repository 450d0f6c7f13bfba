package manifest

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const instanceKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 user@host"

// An instance manifest shaped after the reference's INSTANCE message: no
// code, no on, a rootfs; persistent without saying so; relative image
// paths relative to the file; and it survives the cluster's JSON round
// trip.
func TestInstanceManifest(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.json")
	doc := `{"programs": {"box": {"kind": "instance",
		"rootfs": {"parent": {"path": "images/root.squashfs", "use_latest": true}, "persistence": "host", "size_mib": 2048},
		"authorized_keys": ["` + instanceKey + `"],
		"environment": {"allowed_ports": [22]},
		"volumes": [{"mount": "/srv", "persistent": true, "name": "data", "size_mib": 64}],
		"resources": {"vcpus": 1, "memory": 512}}}}`
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	box := f.Programs["box"]
	if !box.IsInstance() || !box.Persistent() || box.On.HTTP || box.RootSizeMiB() != 2048 {
		t.Fatalf("instance: %+v", box)
	}
	if want := filepath.Join(dir, "images/root.squashfs"); box.Rootfs.Parent.Path != want || box.Code.Path != "" {
		t.Fatalf("paths: image %q (want %q), code %q", box.Rootfs.Parent.Path, want, box.Code.Path)
	}
	stored, err := json.Marshal(box)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(stored), `"code"`) {
		t.Errorf("an instance's stored manifest has code: %s", stored)
	}
	var back Program
	if err := json.Unmarshal(stored, &back); err != nil || ValidateProgram("box", &back) != nil || back.RootSizeMiB() != 2048 {
		t.Fatalf("round trip: %s: %v", stored, err)
	}

	// Over the API, paths must be absolute: an instance has no code.path.
	if field := back.RelativePath(); field != "" {
		t.Errorf("absolute paths: %s", field)
	}
	back.Rootfs.Parent.Path = "root.squashfs"
	if field := back.RelativePath(); field != "rootfs.parent.path" {
		t.Errorf("a relative image: %q", field)
	}
	if field := (&Program{Code: Code{Path: "app"}}).RelativePath(); field != "code.path" {
		t.Errorf("a relative code path: %q", field)
	}

	// Without rootfs: the agent's image, a root that is not kept.
	bare := Program{Kind: KindInstance, AuthorizedKeys: []string{instanceKey}}
	if err := ValidateProgram("bare", &bare); err != nil || bare.RootSizeMiB() != 0 || !bare.Persistent() {
		t.Fatalf("bare instance: %v", err)
	}
}

// What an instance cannot have, or must have, is an error naming the
// field.
func TestInstanceErrorsNameTheField(t *testing.T) {
	base := func() *Program {
		return &Program{Kind: KindInstance, AuthorizedKeys: []string{instanceKey}, Rootfs: &Rootfs{Persistence: PersistenceHost, SizeMiB: 100}}
	}
	cases := map[string]func(p *Program){
		"kind":               func(p *Program) { p.Kind = "vm" },
		"code":               func(p *Program) { p.Code = Code{Interface: "asgi", Entrypoint: "main:app", Path: "/srv"} },
		"runtime.rootfs":     func(p *Program) { p.Runtime = &Runtime{Rootfs: "/img"} },
		"runtime.python":     func(p *Program) { p.Runtime = &Runtime{Python: "/usr/bin/python3"} },
		"on.http":            func(p *Program) { p.On.HTTP = true },
		"authorized_keys":    func(p *Program) { p.AuthorizedKeys = nil },
		"authorized_keys[1]": func(p *Program) { p.AuthorizedKeys = append(p.AuthorizedKeys, "my key") },
		"rootfs.parent.ref": func(p *Program) {
			p.Rootfs.Parent.Ref = "549ec451d9b099cad112d4aaa2c00ac40fb6729a92ff252ff22eef0b5c3cb613"
		},
		"rootfs.size_mib":     func(p *Program) { p.Rootfs.SizeMiB = 0 },
		"rootfs.persistence":  func(p *Program) { p.Rootfs.Persistence = "store" },
		"volumes[0].size_mib": func(p *Program) { p.Volumes = []Volume{{Mount: "/srv", Persistent: true}} },
		"environment.allowed_ports[0]": func(p *Program) {
			p.Environment.AllowedPorts = []Port{{Port: 0}}
		},
	}
	for field, spoil := range cases {
		t.Run(field, func(t *testing.T) {
			p := base()
			spoil(p)
			err := ValidateProgram("box", p)
			var ferr *FieldError
			if !errors.As(err, &ferr) || !strings.HasPrefix(ferr.Field, "programs.box."+field) {
				t.Fatalf("got %v, want an error at programs.box.%s", err, field)
			}
		})
	}
	// The root's disk is bounded as volumes are: 2^44 MiB is 2^64
	// bytes, which the disk-space check's and the image's arithmetic
	// would see wrapped.
	for _, size := range []int{MaxVolumeMiB + 1, 1 << 44, -1} {
		p := base()
		p.Rootfs.SizeMiB = size
		var ferr *FieldError
		if err := ValidateProgram("box", p); !errors.As(err, &ferr) || ferr.Field != "programs.box.rootfs.size_mib" {
			t.Errorf("a root disk of %d MiB: %v", size, err)
		}
	}
	p := base()
	p.Rootfs.SizeMiB = MaxVolumeMiB
	if err := ValidateProgram("box", p); err != nil {
		t.Errorf("a root disk of MaxVolumeMiB: %v", err)
	}

	// A size without persistence says what is missing.
	p = base()
	p.Rootfs.Persistence = ""
	if err := ValidateProgram("box", p); err == nil || !strings.Contains(err.Error(), `"persistence": "host"`) {
		t.Errorf("a size without persistence: %v", err)
	}
	// A program may not have a rootfs.
	prog := &Program{Code: Code{Interface: "asgi", Entrypoint: "main:app", Path: "/srv"}, On: On{HTTP: true}, Rootfs: &Rootfs{}}
	var ferr *FieldError
	if err := ValidateProgram("app", prog); !errors.As(err, &ferr) || ferr.Field != "programs.app.rootfs" {
		t.Errorf("a program with a rootfs: %v", err)
	}
}
