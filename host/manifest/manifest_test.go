package manifest

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
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

// Limits parse as durations and counts; a concurrency beyond what one
// session to init carries, or negative, names its field.
func TestLimits(t *testing.T) {
	doc := `{"limits": {"max_concurrent": 100, "queue_timeout": "300ms", "header_timeout": "5s", "body_timeout": "20s",
		"send_timeout": "30s", "keepalive_timeout": "1m", "log_rate": 50},
		"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true},
		"limits": {"max_concurrent": 8, "queue_timeout": "1s"}}}}`
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	l, pl := f.Limits, f.Programs["a"].Limits
	if l.MaxConcurrent != 100 || l.QueueTimeout.Milliseconds() != 300 || l.HeaderTimeout.Seconds() != 5 || l.BodyTimeout.Seconds() != 20 ||
		l.SendTimeout.Seconds() != 30 || l.KeepaliveTimeout.Minutes() != 1 || l.LogRate != 50 {
		t.Errorf("limits: %+v", l)
	}
	if pl == nil || pl.MaxConcurrent != 8 || pl.QueueTimeout.Seconds() != 1 {
		t.Errorf("program limits: %+v", pl)
	}
	for doc, field := range map[string]string{
		`{"limits": {"max_concurrent": 5000}, "programs": {}}`: "limits.max_concurrent",
		`{"limits": {"max_concurrent": -1}, "programs": {}}`:   "limits.max_concurrent",
		`{"limits": {"log_rate": -1}, "programs": {}}`:         "limits.log_rate",
		`{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true},
			"limits": {"max_concurrent": 1025}}}}`: "programs.a.limits.max_concurrent",
	} {
		var ferr *FieldError
		if _, err := Parse([]byte(doc)); !errors.As(err, &ferr) || ferr.Field != field {
			t.Errorf("want an error at %s, got %v", field, err)
		}
	}
	if _, err := Parse([]byte(`{"limits": {"body_timeout": "slow"}, "programs": {}}`)); err == nil {
		t.Error("bad duration accepted")
	}
	if _, err := Parse([]byte(`{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true},
		"limits": {"header_timeout": "1s"}}}}`)); err == nil {
		t.Error("a listener timeout accepted in a program's manifest")
	}
}

// resources.workers falls back to vcpus only when absent; seconds may be
// a fraction; runtime.python is kept.
func TestWorkersTimeoutAndPython(t *testing.T) {
	doc := `{"programs": {
		"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true}, "resources": {"vcpus": 2}},
		"b": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true}, "resources": {"vcpus": 2, "workers": 0, "seconds": 1.5}},
		"c": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true}, "resources": {"workers": 3},
		      "runtime": {"python": "/opt/python3"}}}}`
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := f.Programs["a"].Resources, f.Programs["b"].Resources, f.Programs["c"]
	if a.WorkerCount() != 2 || b.WorkerCount() != 0 || c.Resources.WorkerCount() != 3 {
		t.Errorf("workers: %d %d %d, want 2 0 3", a.WorkerCount(), b.WorkerCount(), c.Resources.WorkerCount())
	}
	if a.Timeout() != 0 || b.Timeout() != 1500*time.Millisecond || c.Runtime.Python != "/opt/python3" {
		t.Errorf("timeouts %v %v, python %q", a.Timeout(), b.Timeout(), c.Runtime.Python)
	}
	bad := `{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true}, "resources": {"workers": -1}}}}`
	var ferr *FieldError
	if _, err := Parse([]byte(bad)); !errors.As(err, &ferr) || ferr.Field != "programs.a.resources" {
		t.Errorf("negative workers: %v", err)
	}
}

// OneProgram is run's configuration: the program alone as RunProgramID,
// served at the root, validated like any program; a file cannot ask for a
// root.
func TestOneProgram(t *testing.T) {
	p := &Program{Code: Code{Entrypoint: "main:app", Interface: "asgi", Path: "/srv/app"}, On: On{HTTP: true}}
	f, err := OneProgram(p)
	if err != nil || f.Root != RunProgramID || len(f.Programs) != 1 || f.Programs[RunProgramID] != p {
		t.Fatalf("%+v %v", f, err)
	}
	p.Code.Interface = "wsgi"
	var ferr *FieldError
	if _, err := OneProgram(p); !errors.As(err, &ferr) || ferr.Field != "programs.main.code.interface" {
		t.Fatalf("a bad program: %v", err)
	}
	if f, err := Parse([]byte(`{"Root": "a", "root": "a", "programs": {}}`)); err == nil || (f != nil && f.Root != "") {
		t.Fatalf("a configuration file set the root: %+v %v", f, err)
	}
}

// A manifest written back as JSON (the cluster stores them so) reads back
// the same, per-program limits and their durations and ports included.
func TestManifestSurvivesARoundTrip(t *testing.T) {
	f, err := Parse([]byte(`{"programs": {"web": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "/srv/web"},
		"limits": {"max_concurrent": 8, "queue_timeout": "750ms"}, "on": {"http": true},
		"environment": {"internet": true, "allowed_ports": [22, {"port": 53, "protocol": "udp"}], "port_forwards": [{"host_port": 2222, "port": 22}]}},
		"bare": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "/srv/bare"}, "limits": {"max_concurrent": 2}, "on": {"http": true}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for id, p := range f.Programs {
		doc, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var back Program
		if err := json.Unmarshal(doc, &back); err != nil {
			t.Fatalf("%s: %s does not read back: %v", id, doc, err)
		}
		if !reflect.DeepEqual(&back, p) {
			t.Errorf("%s: round trip gave %+v, want %+v", id, back, *p)
		}
	}
}
