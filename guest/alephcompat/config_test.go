package alephcompat

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ferry-vm/ferry/protocol/contract"
)

func TestReadySignalBytes(t *testing.T) {
	b, err := msgpack.Marshal(&ready{Version: Version})
	if err != nil {
		t.Fatal(err)
	}
	// msgpack.dumps({"version": "2.0.0"}) in Python.
	if want := "\x81\xa7version\xa52.0.0"; string(b) != want {
		t.Fatalf("% x, want % x", b, want)
	}
	ok, _ := msgpack.Marshal(&configReply{Success: true})
	if want := "\x81\xa7success\xc3"; string(ok) != want {
		t.Fatalf("success reply % x, want % x", ok, want)
	}
}

func TestReadLength(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"12\n", 12, true},
		{"99999999\n", 99999999, true},
		{"123456789\n", 0, false}, // longer than the reference reads
		{"0\n", 0, false},
		{"-3\n", 0, false},
		{"12", 0, false},
		{"1x\n", 0, false},
	} {
		n, err := readLength(bufio.NewReader(strings.NewReader(c.in)))
		if (err == nil) != c.ok || n != c.want {
			t.Errorf("%q: %d %v", c.in, n, err)
		}
	}
}

func TestTranslate(t *testing.T) {
	dir := t.TempDir()
	hash := "4a3b1c6d2e8f0a9b7c5d3e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b"
	for _, c := range []struct {
		name  string
		doc   configDoc
		check func(*testing.T, *contract.Config)
		err   string
	}{
		{name: "squashfs drive", doc: configDoc{VMHash: hash, Interface: "asgi", Encoding: "squashfs", Entrypoint: "main:app",
			Volumes: []volumeDoc{{Mount: "/opt/code", Device: "vdb", ReadOnly: true}, {Mount: "/srv/data", Device: "vdc"}, {Mount: "/srv/ro", Device: "vdd", ReadOnly: true}}},
			check: func(t *testing.T, c *contract.Config) {
				if c.Code.Encoding != "squashfs" || c.Code.Device != "vdb" || len(c.Volumes) != 2 ||
					c.Volumes[0] != (contract.Volume{Mount: "/srv/data", Device: "vdc"}) ||
					c.Volumes[1] != (contract.Volume{Mount: "/srv/ro", Device: "vdd", FS: "squashfs", ReadOnly: true}) {
					t.Fatalf("%+v %+v", c.Code, c.Volumes)
				}
			}},
		{name: "zip inside, network v2", doc: configDoc{VMHash: hash, Interface: "asgi", Encoding: "zip", Entrypoint: "main:app", Code: []byte("PK"),
			IP: "172.16.4.2", Route: "172.16.4.1", IPv6: "fd00::2/124", IPv6Gateway: "fd00::1", DNSServers: []string{"9.9.9.9"},
			Variables: map[string]string{"A": "1", "PYTHONPATH": "/mine"}, AuthorizedKeys: []string{"ssh-ed25519 AAAA me"}},
			check: func(t *testing.T, c *contract.Config) {
				if b, err := os.ReadFile(c.Code.Path); err != nil || string(b) != "PK" {
					t.Fatalf("code file %q %v", b, err)
				}
				n := c.Network
				if n.IPv4.Address != "172.16.4.2/24" || n.IPv4.Gateway != "172.16.4.1" || n.IPv6.Address != "fd00::2/124" || n.IPv6.Gateway != "fd00::1" || n.DNS[0] != "9.9.9.9" {
					t.Fatalf("%+v %+v %+v", n, n.IPv4, n.IPv6)
				}
				if c.Env["A"] != "1" || c.Env["PYTHONPATH"] != "/mine" || c.Env["ALEPH_INIT_VERSION"] != "2.0.0" || c.Env["ALEPH_API_UNIX_SOCKET"] != "/sock" {
					t.Fatalf("%v", c.Env)
				}
				// init1.py setup_system's name for the hash, computed with Python.
				if c.Hostname != "ji5ry3jor4fjw7c5hypsus3mruhc6stlrqgs4t3krmgc2ttprifq" || c.ProgramID != c.Hostname || c.AuthorizedKeys[0] != "ssh-ed25519 AAAA me" {
					t.Fatalf("%q %q", c.Hostname, c.ProgramID)
				}
				if err := c.Validate(); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "plain asgi without a colon", doc: configDoc{VMHash: hash, Interface: "asgi", Encoding: "plain", Entrypoint: "app", Code: []byte("app = 1")},
			check: func(t *testing.T, c *contract.Config) {
				if c.Entrypoint != "main:app" {
					t.Fatal(c.Entrypoint)
				}
			}},
		{name: "bad hash", doc: configDoc{VMHash: "not-hex", Interface: "asgi", Encoding: "zip", Code: []byte("x")}, err: "vm_hash"},
		{name: "no code", doc: configDoc{VMHash: hash, Interface: "asgi", Encoding: "zip"}, err: "code"},
		{name: "squashfs nowhere", doc: configDoc{VMHash: hash, Interface: "asgi", Encoding: "squashfs"}, err: "code"},
		{name: "unknown encoding", doc: configDoc{VMHash: hash, Interface: "asgi", Encoding: "tar"}, err: "encoding"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr, err := translate(&c.doc, dir, "/sock")
			if c.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.err) {
					t.Fatalf("error %v, want one about %s", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, tr.config)
		})
	}
}
