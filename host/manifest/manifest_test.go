package manifest

import (
	"errors"
	"testing"
)

func TestParseNamesTheFieldAtFault(t *testing.T) {
	good := `{"programs": {"hello": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": "./hello"},
		"resources": {"vcpus": 1, "memory": 256, "seconds": 30}, "on": {"http": true}}}}`
	f, err := Parse([]byte(good))
	if err != nil || f.Programs["hello"].Resources.Seconds != 30 {
		t.Fatalf("good configuration: %v", err)
	}
	cases := map[string]string{
		`{"programs": {"Bad_ID": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true}}}}`: "programs.Bad_ID",
		`{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "wsgi", "path": "x"}, "on": {"http": true}}}}`:      "programs.a.code.interface",
		`{"programs": {"a": {"code": {"interface": "asgi", "path": "x"}, "on": {"http": true}}}}`:                           "programs.a.code.entrypoint",
		`{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi"}, "on": {"http": true}}}}`:                   "programs.a.code.path",
		`{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {}}}}`:                  "programs.a.on",
		`{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true},
			"volumes": [{"mount": "/data", "persistent": true}]}}}`: "programs.a.volumes[0].size_mib",
	}
	for doc, field := range cases {
		_, err := Parse([]byte(doc))
		var ferr *FieldError
		if !errors.As(err, &ferr) || ferr.Field != field {
			t.Errorf("want an error at %s, got %v", field, err)
		}
	}
	if _, err := Parse([]byte(`{"programs": {}, "colour": "blue"}`)); err == nil {
		t.Error("unknown field accepted")
	}
	if _, err := Parse([]byte(`{"programs": {}, "idle_timeout": "soon"}`)); err == nil {
		t.Error("bad duration accepted")
	}
}
