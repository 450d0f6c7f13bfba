package manifest

import (
	"errors"
	"reflect"
	"testing"
)

// withEnvironment is a valid manifest's JSON with env as its environment.
func withEnvironment(id, env string) string {
	return `"` + id + `": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": {"http": true}, "environment": ` + env + `}`
}

func TestEnvironmentPorts(t *testing.T) {
	f, err := Parse([]byte(`{"programs": {` + withEnvironment("a", `{"allowed_ports": [22, {"port": 53, "protocol": "udp"}, {"port": 80}],
		"port_forwards": [{"host_port": 2222, "port": 22}, {"host_port": 5353, "port": 53, "protocol": "udp"}]}`) + `}}`))
	if err != nil {
		t.Fatal(err)
	}
	env := f.Programs["a"].Environment
	want := []Port{{22, TCP}, {53, UDP}, {80, ""}}
	if !reflect.DeepEqual(env.AllowedPorts, want) || env.AllowedPorts[2].Proto() != TCP {
		t.Errorf("allowed ports %+v", env.AllowedPorts)
	}
	if len(env.PortForwards) != 2 || env.PortForwards[0].Proto() != TCP || env.PortForwards[1] != (PortForward{5353, 53, UDP}) {
		t.Errorf("forwards %+v", env.PortForwards)
	}
	if env.Internet || !env.Interface() {
		t.Error("ports without internet: an interface, no internet")
	}
	if (Environment{}).Interface() || !(Environment{Internet: true}).Interface() {
		t.Error("Interface")
	}
}

func TestEnvironmentBadPorts(t *testing.T) {
	for env, field := range map[string]string{
		`{"allowed_ports": [0]}`:                                                                "programs.a.environment.allowed_ports[0]",
		`{"allowed_ports": [80, 65536]}`:                                                        "programs.a.environment.allowed_ports[1]",
		`{"allowed_ports": [-1]}`:                                                               "programs.a.environment.allowed_ports[0]",
		`{"allowed_ports": [{"port": 80, "protocol": "sctp"}]}`:                                 "programs.a.environment.allowed_ports[0]",
		`{"allowed_ports": [80, {"port": 80, "protocol": "tcp"}]}`:                              "programs.a.environment.allowed_ports[1]",
		`{"port_forwards": [{"host_port": 0, "port": 80}]}`:                                     "programs.a.environment.port_forwards[0].host_port",
		`{"port_forwards": [{"host_port": 80, "port": 70000}]}`:                                 "programs.a.environment.port_forwards[0].port",
		`{"port_forwards": [{"host_port": 8080, "port": 80}, {"host_port": 8080, "port": 81}]}`: "programs.a.environment.port_forwards[1].host_port",
	} {
		var ferr *FieldError
		if _, err := Parse([]byte(`{"programs": {` + withEnvironment("a", env) + `}}`)); !errors.As(err, &ferr) || ferr.Field != field {
			t.Errorf("%s: want an error at %s, got %v", env, field, err)
		}
	}
	for _, env := range []string{`{"allowed_ports": [8.5]}`, `{"allowed_ports": ["http"]}`, `{"allowed_ports": [{"port": 80, "proto": "tcp"}]}`} {
		if _, err := Parse([]byte(`{"programs": {` + withEnvironment("a", env) + `}}`)); err == nil {
			t.Errorf("%s accepted", env)
		}
	}
	// Two programs may not forward the same host port; the same port
	// over another protocol is another port.
	two := `{"programs": {` + withEnvironment("a", `{"port_forwards": [{"host_port": 8080, "port": 80}]}`) + `, ` +
		withEnvironment("b", `{"port_forwards": [{"host_port": 8080, "port": 80, "protocol": "udp"}, {"host_port": 8080, "port": 81}]}`) + `}}`
	var ferr *FieldError
	if _, err := Parse([]byte(two)); !errors.As(err, &ferr) || ferr.Field != "programs.b.environment.port_forwards[1].host_port" {
		t.Errorf("shared host port: %v", err)
	}
}
