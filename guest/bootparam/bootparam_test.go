package bootparam

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsWhenNothingIsSaid(t *testing.T) {
	p, errs := Parse("console=ttyS0 root=/dev/vda ro quiet")
	if len(errs) != 0 || !reflect.DeepEqual(p, Defaults()) {
		t.Fatalf("got %+v %v", p, errs)
	}
	if p.Transport.String() != "vsock:52" {
		t.Fatalf("default transport %s", p.Transport)
	}
}

func TestParseAll(t *testing.T) {
	p, errs := Parse(`console=ttyS0 ferry.transport=serial:ferry ferry.overlay=1 ferry.debug ferry.shutdown=reboot ferry.grace=2s ferry.root=serial:rootfs ferry.rootfstype=squashfs init=/sbin/init`)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	want := Params{Transport: Transport{Kind: TransportSerial, Name: "ferry"}, Overlay: true, Debug: true, OnExit: ActionReboot, Grace: 2 * time.Second, Root: "serial:rootfs", RootFS: "squashfs"}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v want %+v", p, want)
	}
}

func TestTransports(t *testing.T) {
	good := map[string]string{
		"vsock:1024":           "vsock:1024",
		"serial:/dev/vport1p1": "serial:/dev/vport1p1",
		"fd:3":                 "fd:3",
		"unix:/run/ferry.sock": "unix:/run/ferry.sock",
	}
	for in, want := range good {
		tr, err := ParseTransport(in)
		if err != nil || tr.String() != want {
			t.Errorf("%s: %v %v", in, tr, err)
		}
	}
	for _, bad := range []string{"", "vsock", "vsock:", "vsock:0", "vsock:x", "tcp:80", "fd:-1", "unix:relative", "serial:../etc"} {
		if _, err := ParseTransport(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestBadValuesKeepDefaultsAndNameTheParameter(t *testing.T) {
	p, errs := Parse("ferry.transport=tcp:1 ferry.overlay=maybe ferry.grace=forever ferry.colour=blue ferry.shutdown=halt")
	if len(errs) != 5 {
		t.Fatalf("want 5 errors, got %v", errs)
	}
	for _, e := range errs {
		if !strings.Contains(e.Error(), "ferry.") {
			t.Errorf("error does not name the parameter: %v", e)
		}
	}
	if !reflect.DeepEqual(p, Defaults()) {
		t.Fatalf("defaults not kept: %+v", p)
	}
}

func TestQuotedWords(t *testing.T) {
	got := splitCmdline(`a "b c" d="e f" ferry.transport="unix:/run/x"`)
	want := []string{"a", "b c", "d=e f", "ferry.transport=unix:/run/x"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
}

func TestModuleParamsAreTakenFromTheCommandLine(t *testing.T) {
	cmdline := `console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 virtio_mmiox.bad=1 ferry.debug "virtio_mmio.quoted=a b"`
	got := ModuleParams(cmdline, "virtio-mmio")
	want := `device=512@0xfeb00e00:12 device=512@0xfeb00c00:11 quoted="a b"`
	if got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if got := ModuleParams(cmdline, "squashfs"); got != "" {
		t.Fatalf("squashfs got %q", got)
	}
}
