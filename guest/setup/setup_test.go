package setup

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/protocol/contract"
)

func testOptions(t *testing.T) Options {
	root := t.TempDir()
	return Options{Paths: Paths{Root: root, Code: filepath.Join(root, "opt/code"), Data: filepath.Join(root, "data"),
		DevRoot: filepath.Join(root, "dev"), SysBlock: filepath.Join(root, "sys/block")}}
}

func TestDirectoryCodeAndKeys(t *testing.T) {
	opt := testOptions(t)
	code := t.TempDir()
	os.WriteFile(filepath.Join(code, "main.py"), []byte("app = None\n"), 0o644)
	c := &contract.Config{ProgramID: "p", Interface: "asgi", Entrypoint: "main:app",
		Code:           contract.Code{Encoding: "directory", Source: contract.Source{Path: code}},
		AuthorizedKeys: []string{"ssh-ed25519 AAAA a@b"}}
	var tl boot.Timeline
	res, err := Apply(context.Background(), slog.New(slog.DiscardHandler), c, opt, &tl)
	if err != nil {
		t.Fatal(err)
	}
	if res.CodeDir != code {
		t.Fatalf("code dir %s", res.CodeDir)
	}
	st, err := os.Stat(filepath.Join(opt.Paths.Root, "root/.ssh/authorized_keys"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("authorized_keys %v %v", st, err)
	}
	dir, _ := os.Stat(filepath.Join(opt.Paths.Root, "root/.ssh"))
	if dir.Mode().Perm() != 0o700 {
		t.Fatalf(".ssh mode %v", dir.Mode())
	}
}

func TestErrorsNamePhaseAndField(t *testing.T) {
	opt := testOptions(t)
	code := t.TempDir()
	cases := map[string]struct {
		c            contract.Config
		phase, field string
	}{
		"missing module": {contract.Config{Interface: "asgi", Entrypoint: "app:app",
			Code: contract.Code{Encoding: "directory", Source: contract.Source{Path: code}}}, "code", "entrypoint"},
		"missing executable": {contract.Config{Interface: "executable", Entrypoint: "server",
			Code: contract.Code{Encoding: "directory", Source: contract.Source{Path: code}}}, "code", "entrypoint"},
		"code dir missing": {contract.Config{Interface: "asgi", Entrypoint: "main:app",
			Code: contract.Code{Encoding: "directory", Source: contract.Source{Path: "/nonexistent/ferry"}}}, "code", "code.path"},
		"zip missing": {contract.Config{Interface: "asgi", Entrypoint: "main:app",
			Code: contract.Code{Encoding: "zip", Source: contract.Source{Path: "/nonexistent.zip"}}}, "code", "code"},
		"missing device": {contract.Config{Interface: "asgi", Entrypoint: "main:app",
			Code: contract.Code{Encoding: "zip", Source: contract.Source{Device: "vdq"}}}, "code", "code"},
		"volume without pid 1": {contract.Config{Interface: "asgi", Entrypoint: "main:app",
			Volumes: []contract.Volume{{Mount: "/data", Device: "vdc"}},
			Code:    contract.Code{Encoding: "directory", Source: contract.Source{Path: code}}}, "volumes", "volumes[0]"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var tl boot.Timeline
			_, err := Apply(context.Background(), slog.New(slog.DiscardHandler), &tc.c, opt, &tl)
			var perr *contract.ConfigError
			if !errors.As(err, &perr) || perr.Phase != tc.phase || perr.Field != tc.field {
				t.Fatalf("got %v, want phase %s field %s", err, tc.phase, tc.field)
			}
		})
	}
}

// A plain file lands in the code directory under the name its entrypoint
// looks for: an ASGI module as module.py, an executable as itself.
func TestPlainFileIsNamedForItsEntrypoint(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app-source")
	if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ iface, entrypoint, want string }{
		{contract.InterfaceASGI, "main:app", "main.py"},
		{contract.InterfaceASGI, "pkg.web:app", "pkg/web.py"},
		{contract.InterfaceExecutable, "server", "server"},
	}
	for _, tc := range cases {
		t.Run(tc.entrypoint, func(t *testing.T) {
			opt := testOptions(t)
			c := &contract.Config{ProgramID: "p", Interface: tc.iface, Entrypoint: tc.entrypoint,
				Code: contract.Code{Encoding: contract.EncodingPlainFile, Source: contract.Source{Path: src}}}
			var tl boot.Timeline
			res, err := Apply(context.Background(), slog.New(slog.DiscardHandler), c, opt, &tl)
			if err != nil {
				t.Fatal(err)
			}
			if res.CodeDir != opt.Paths.Code {
				t.Fatalf("code dir %s", res.CodeDir)
			}
			if _, err := os.Stat(filepath.Join(res.CodeDir, tc.want)); err != nil {
				t.Fatalf("%s not in the code directory: %v", tc.want, err)
			}
		})
	}
}

// An instance has no code: setup writes its keys and looks for no
// entrypoint.
func TestInstanceHasNoCode(t *testing.T) {
	opt := testOptions(t)
	c := &contract.Config{ProgramID: "box", Interface: contract.InterfaceInstance, AuthorizedKeys: []string{"ssh-ed25519 AAAA a@b"}}
	var tl boot.Timeline
	res, err := Apply(context.Background(), slog.New(slog.DiscardHandler), c, opt, &tl)
	if err != nil {
		t.Fatal(err)
	}
	if res.CodeDir != "" {
		t.Fatalf("an instance got a code directory: %s", res.CodeDir)
	}
	if _, err := os.Stat(opt.Paths.Code); !os.IsNotExist(err) {
		t.Fatalf("the code directory was made for an instance: %v", err)
	}
	keys, err := os.ReadFile(filepath.Join(opt.Paths.Root, "root/.ssh/authorized_keys"))
	if err != nil || string(keys) != "ssh-ed25519 AAAA a@b\n" {
		t.Fatalf("authorized_keys %q %v", keys, err)
	}
}
