package lifecycle

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// init gets a typed configuration built from the program and the VM: a
// document contract.Parse accepts as it is, with the code where the VM
// has it; a single code file is named for its entrypoint.
func TestInitGetsTheProgramsConfiguration(t *testing.T) {
	be := newFakeBackend()
	close(be.Gate)
	m := newTestManager(t, be, Options{})
	p := &Program{ID: "typed", Interface: contract.InterfaceASGI, Entrypoint: "pkg.web:app", CodePath: "/srv/web.py",
		Workers: 2, Python: "/usr/bin/python3", Env: map[string]string{"GREETING": "hi"},
		AuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 me@host"}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst, err := m.Acquire(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	inst.Release()
	vm := <-be.Started()
	if vm.Spec.CodePath != "/srv/web.py" || vm.Spec.CodeFile != "pkg/web.py" {
		t.Errorf("backend got code %q as %q", vm.Spec.CodePath, vm.Spec.CodeFile)
	}
	c, err := contract.Parse(vm.Config())
	if err != nil {
		t.Fatalf("init would refuse the configuration: %v", err)
	}
	want := &contract.Config{ProgramID: "typed", Interface: "asgi", Entrypoint: "pkg.web:app",
		Code:    contract.Code{Encoding: contract.EncodingDirectory, Source: contract.Source{Path: contract.DefaultCodeDir}},
		Workers: 2, Python: "/usr/bin/python3", Env: p.Env, AuthorizedKeys: p.AuthorizedKeys}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("init got %+v\nwant %+v", c, want)
	}
}

// A configuration the agent's own validation refuses never reaches init:
// the boot fails with the field at fault, and its VM is stopped.
func TestInvalidConfigurationIsNotSent(t *testing.T) {
	be := newFakeBackend()
	close(be.Gate)
	m := newTestManager(t, be, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := m.Acquire(ctx, &Program{ID: "typo", Interface: contract.InterfaceASGI, Entrypoint: "main.py"})
	cerr, ok := errors.AsType[*contract.ConfigError](err)
	if !ok || cerr.Phase != contract.PhaseValidate || cerr.Field != "entrypoint" {
		t.Fatalf("got %v, want a validation error on entrypoint", err)
	}
	vm := <-be.Started()
	if !vm.Ended() {
		t.Error("the VM of a refused configuration still runs")
	}
	if doc := vm.Config(); doc != nil {
		t.Errorf("init received %q", doc)
	}
}
