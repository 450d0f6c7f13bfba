package contract

import (
	"errors"
	"strings"
	"testing"
)

const good = `{
  "program_id": "hello",
  "interface": "asgi",
  "entrypoint": "main:app",
  "code": {"encoding": "squashfs", "device": "vdb"},
  "volumes": [{"mount": "/data", "device": "serial:persist", "fs": "ext4"}],
  "network": {"ipv4": {"address": "10.0.0.2/24", "gateway": "10.0.0.1"},
              "ipv6": {"address": "fd00::2/64", "gateway": "fd00::1"}, "mtu": 1500, "dns": ["9.9.9.9", "2620:fe::fe"]},
  "hostname": "hello",
  "env": {"GREETING": "hi"},
  "authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 user@host"],
  "workers": 2
}`

func TestGoodConfig(t *testing.T) {
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Network.IPv6.Prefix().Bits() != 64 || c.Volumes[0].Device != "serial:persist" {
		t.Fatalf("parsed %+v", c)
	}
}

// Each bad document is refused with an error naming the field at fault.
func TestBadConfigsNameTheField(t *testing.T) {
	cases := map[string]struct{ from, to, field string }{
		"unknown field":       {`"workers": 2`, `"workers": 2, "wrokers": 3`, "wrokers"},
		"wrong type":          {`"workers": 2`, `"workers": "two"`, "workers"},
		"unsafe id":           {`"program_id": "hello"`, `"program_id": "../etc"`, "program_id"},
		"interface":           {`"interface": "asgi"`, `"interface": "wsgi"`, "interface"},
		"entrypoint":          {`"entrypoint": "main:app"`, `"entrypoint": "main.py"`, "entrypoint"},
		"code encoding":       {`"encoding": "squashfs"`, `"encoding": "tar"`, "code.encoding"},
		"code device":         {`"device": "vdb"}`, `"device": "/dev/../vdb"}`, "code.device"},
		"relative code path":  {`"device": "vdb"}`, `"path": "code"}`, "code.path"},
		"ipv4 prefix":         {`"10.0.0.2/24"`, `"10.0.0.2/33"`, "network.ipv4.address"},
		"ipv4 without prefix": {`"10.0.0.2/24"`, `"10.0.0.2"`, "network.ipv4.address"},
		"ipv6 as ipv4":        {`"10.0.0.2/24"`, `"fd00::9/64"`, "network.ipv4.address"},
		"gateway off-net":     {`"gateway": "10.0.0.1"`, `"gateway": "192.168.1.1"`, "network.ipv4.gateway"},
		"bad ipv6 gateway":    {`"gateway": "fd00::1"`, `"gateway": "10.0.0.1"`, "network.ipv6.gateway"},
		"mtu":                 {`"mtu": 1500`, `"mtu": 12`, "network.mtu"},
		"dns":                 {`"9.9.9.9"`, `"dns.example"`, "network.dns[0]"},
		"hostname":            {`"hostname": "hello"`, `"hostname": "bad_name!"`, "hostname"},
		"env name":            {`"GREETING"`, `"1BAD"`, "env.1BAD"},
		"ssh key":             {`"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 user@host"`, `"not a key\nssh-rsa AAAA"`, "authorized_keys[0]"},
		"volume mount":        {`"mount": "/data"`, `"mount": "/proc"`, "volumes[0].mount"},
		"volume fs":           {`"fs": "ext4"`, `"fs": "ntfs"`, "volumes[0].fs"},
		"workers":             {`"workers": 2`, `"workers": -1`, "workers"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(good, c.from) {
				t.Fatalf("test bug: %q not in the good config", c.from)
			}
			_, err := Parse([]byte(strings.Replace(good, c.from, c.to, 1)))
			var ferr *ConfigError
			if !errors.As(err, &ferr) || ferr.Field != c.field || ferr.Phase != PhaseValidate {
				t.Fatalf("got %v, want an error on field %s", err, c.field)
			}
		})
	}
}

func TestMissingFields(t *testing.T) {
	_, err := Parse([]byte(`{"program_id": "x", "interface": "asgi", "entrypoint": "main:app", "code": {"encoding": "zip"}}`))
	var ferr *ConfigError
	if !errors.As(err, &ferr) || ferr.Field != "code" {
		t.Fatalf("got %v", err)
	}
	if _, err := Parse([]byte(`{`)); err == nil {
		t.Fatal("truncated JSON accepted")
	}
	if _, err := Parse([]byte(`{"program_id":"x"} {}`)); err == nil {
		t.Fatal("trailing data accepted")
	}
}

// Program ids are DNS labels: the host's manifests and init's
// configuration accept the same ones.
func TestValidID(t *testing.T) {
	for _, id := range []string{"a", "hello", "my-app-2", strings.Repeat("x", 63)} {
		if !ValidID(id) {
			t.Errorf("%q refused", id)
		}
	}
	for _, id := range []string{"", "-a", "a-", "Hello", "a_b", "a.b", "../etc", strings.Repeat("x", 64)} {
		if ValidID(id) {
			t.Errorf("%q accepted", id)
		}
	}
}

// A single code file is named after what the entrypoint looks for.
func TestFileName(t *testing.T) {
	cases := []struct{ iface, entrypoint, want string }{
		{InterfaceASGI, "main:app", "main.py"},
		{InterfaceASGI, "mysite.asgi:application", "mysite/asgi.py"},
		{InterfaceExecutable, "server", "server"},
		{InterfaceExecutable, "bin/./server", "bin/server"},
		{InterfaceExecutable, "/usr/local/bin/server", "server"},
		{InterfaceExecutable, "../server", "server"},
	}
	for _, c := range cases {
		if got := FileName(c.iface, c.entrypoint); got != c.want {
			t.Errorf("%s %s: got %q want %q", c.iface, c.entrypoint, got, c.want)
		}
	}
}

// An instance has no entrypoint and no code; anything else of a program's
// configuration (keys, network, volumes) is checked as for programs.
func TestInstanceConfig(t *testing.T) {
	const instance = `{"program_id": "box", "interface": "instance",
		"authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 user@host"],
		"volumes": [{"mount": "/srv", "device": "serial:ferry-vol0", "fs": "ext4"}]}`
	if _, err := Parse([]byte(instance)); err != nil {
		t.Fatalf("instance refused: %v", err)
	}
	for name, c := range map[string]struct{ from, to, field string }{
		"entrypoint": {`"interface": "instance"`, `"interface": "instance", "entrypoint": "main:app"`, "entrypoint"},
		"code":       {`"interface": "instance"`, `"interface": "instance", "code": {"encoding": "zip", "device": "vdb"}`, "code"},
		"ssh key":    {`"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 user@host"`, `"hello"`, "authorized_keys[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(strings.Replace(instance, c.from, c.to, 1)))
			var ferr *ConfigError
			if !errors.As(err, &ferr) || ferr.Field != c.field {
				t.Fatalf("got %v, want an error on field %s", err, c.field)
			}
		})
	}
}
