package manifest

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// The content of the reference's example PROGRAM message
// (aleph-im/aleph-vm examples/program_message_from_aleph.json, without
// on.message, which is the triggers' business) is a valid manifest.
func TestTheReferencesProgramContentIsAManifest(t *testing.T) {
	doc, err := os.ReadFile("testdata/aleph_program.json")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse([]byte(`{"programs": {"aleph": ` + string(doc) + `}}`))
	if err != nil {
		t.Fatal(err)
	}
	p := f.Programs["aleph"]
	if p.Code.RunInterface() != contract.InterfaceASGI || string(p.Code.Digest()) != "7eb2eca2378ea8855336ed76c8b26219f1cb90234d04441de9cf8cb1c649d003" ||
		p.Runtime.Digest() == "" || p.Data.Encoding != "zip" || p.Volumes[0].Kind() != "immutable" || p.Volumes[1].Kind() != "persistent" {
		t.Fatalf("parsed %+v", p)
	}
	// It survives the cluster's round trip through JSON.
	again, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var q Program
	if err := json.Unmarshal(again, &q); err != nil || ValidateProgram("aleph", &q) != nil || q.Code.Ref != p.Code.Ref {
		t.Fatalf("round trip: %v %s", err, again)
	}
}

func TestRefsAndEncodings(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	good := []string{
		`{"code": {"encoding": "zip", "entrypoint": "main:app", "ref": "` + hex + `"}, "on": {"http": true}}`,
		`{"code": {"encoding": "plain", "entrypoint": "main:app", "ref": "sha256:` + strings.ToUpper(hex) + `"}, "on": {"http": true}}`,
		`{"code": {"encoding": "plain", "entrypoint": "server", "interface": "binary", "ref": "` + hex + `"}, "on": {"http": true}}`,
		`{"code": {"encoding": "squashfs", "entrypoint": "main:app", "path": "/srv/app.squashfs"}, "on": {"http": true},
		  "data": {"encoding": "squashfs", "path": "/srv/data.squashfs"}}`,
		`{"code": {"entrypoint": "main:app", "path": "/srv/app"}, "on": {"http": true},
		  "volumes": [{"mount": "/scratch", "ephemeral": true, "size_mib": 64}, {"mount": "/db", "persistent": true, "size_mib": 5}]}`,
	}
	for _, doc := range good {
		var p Program
		if err := json.Unmarshal([]byte(doc), &p); err != nil {
			t.Fatal(err)
		}
		if err := ValidateProgram("a", &p); err != nil {
			t.Errorf("%s: %v", doc, err)
		}
	}
	var binary Program
	json.Unmarshal([]byte(good[2]), &binary)
	if binary.Code.RunInterface() != contract.InterfaceExecutable {
		t.Errorf("binary runs as %s", binary.Code.RunInterface())
	}
	bad := map[string]string{
		`{"code": {"encoding": "zip", "entrypoint": "m:a", "ref": "abc"}, "on": {"http": true}}`:                                                                  "programs.a.code.ref",
		`{"code": {"entrypoint": "m:a", "ref": "` + hex + `"}, "on": {"http": true}}`:                                                                             "programs.a.code.encoding",
		`{"code": {"encoding": "zip", "entrypoint": "m:a", "ref": "` + hex + `", "use_latest": true}, "on": {"http": true}}`:                                      "programs.a.code.use_latest",
		`{"code": {"encoding": "zip", "entrypoint": "m:a", "ref": "` + hex + `", "path": "/x"}, "on": {"http": true}}`:                                            "programs.a.code",
		`{"code": {"encoding": "tar", "entrypoint": "m:a", "path": "/x"}, "on": {"http": true}}`:                                                                  "programs.a.code.encoding",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "data": {"encoding": "tar", "ref": "` + hex + `"}}`:                                  "programs.a.data.encoding",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "data": {"encoding": "zip", "mount": "/in", "ref": "` + hex + `"}}`:                  "programs.a.data.mount",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "data": {"encoding": "zip"}}`:                                                        "programs.a.data",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "runtime": {"ref": "nope"}}`:                                                         "programs.a.runtime.ref",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "/v"}]}`:                                                       "programs.a.volumes[0]",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "/v", "ephemeral": true}]}`:                                    "programs.a.volumes[0].size_mib",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "/v", "ephemeral": true, "persistent": true, "size_mib": 1}]}`: "programs.a.volumes[0]",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "/v", "ref": "` + hex + `", "size_mib": 3}]}`:                  "programs.a.volumes[0].size_mib",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "/v", "persistent": true, "name": "../x", "size_mib": 1}]}`:    "programs.a.volumes[0].name",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "v", "ephemeral": true, "size_mib": 1}]}`:                      "programs.a.volumes[0].mount",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "data": {"encoding": "zip", "path": "/d.zip"},
		  "volumes": [{"mount": "/data", "ephemeral": true, "size_mib": 1}]}`: "programs.a.volumes[0].mount",
		// Two volumes on one image would mount one ext4 twice, read-write.
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "/v", "persistent": true, "name": "db", "size_mib": 1},
		  {"mount": "/w", "persistent": true, "name": "db", "size_mib": 1}]}`: "programs.a.volumes[1].name",
		`{"code": {"entrypoint": "m:a", "path": "/x"}, "on": {"http": true}, "volumes": [{"mount": "/v", "persistent": true, "name": "volume1", "size_mib": 1},
		  {"mount": "/w", "persistent": true, "size_mib": 1}]}`: "programs.a.volumes[1].name",
	}
	for doc, field := range bad {
		var p Program
		if err := json.Unmarshal([]byte(doc), &p); err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		var ferr *FieldError
		if err := ValidateProgram("a", &p); !errors.As(err, &ferr) || ferr.Field != field {
			t.Errorf("%s: want an error at %s, got %v", doc, field, err)
		}
	}
}
