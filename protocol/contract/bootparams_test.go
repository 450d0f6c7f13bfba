package contract

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsWhenNothingIsSaid(t *testing.T) {
	p, errs := ParseBootParams("console=ttyS0 root=/dev/vda ro quiet")
	if len(errs) != 0 || !reflect.DeepEqual(p, DefaultBootParams()) {
		t.Fatalf("got %+v %v", p, errs)
	}
	if p.Transport.String() != "vsock:52" {
		t.Fatalf("default transport %s", p.Transport)
	}
}

func TestParseAll(t *testing.T) {
	p, errs := ParseBootParams(`console=ttyS0 ferry.transport=serial:ferry ferry.overlay=1 ferry.debug ferry.shutdown=reboot ferry.grace=2s ferry.root=serial:rootfs ferry.rootfstype=squashfs init=/sbin/init`)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	want := BootParams{Transport: Transport{Kind: TransportSerial, Name: "ferry"}, Overlay: true, Debug: true, OnExit: ActionReboot, Grace: 2 * time.Second, Root: "serial:rootfs", RootFS: "squashfs"}
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
	p, errs := ParseBootParams("ferry.transport=tcp:1 ferry.overlay=maybe ferry.grace=forever ferry.colour=blue ferry.shutdown=halt ferry.channels=1 ferry.channels=x ferry.upper=../vdc")
	if len(errs) != 8 {
		t.Fatalf("want 8 errors, got %v", errs)
	}
	for _, e := range errs {
		if !strings.Contains(e.Error(), "ferry.") {
			t.Errorf("error does not name the parameter: %v", e)
		}
	}
	if !reflect.DeepEqual(p, DefaultBootParams()) {
		t.Fatalf("defaults not kept: %+v", p)
	}
}

func TestQuotedWords(t *testing.T) {
	got := SplitCmdline(`a "b c" d="e f" ferry.transport="unix:/run/x"`)
	want := []string{"a", "b c", "d=e f", "ferry.transport=unix:/run/x"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
}

// What a backend renders, init reads back: every parameter, quoted values,
// and the kernel's own words left alone.
func TestBootParamsStringRoundTrips(t *testing.T) {
	cases := []BootParams{
		{Transport: Transport{Kind: TransportSerial, Name: "ferry"}, Overlay: true, Debug: true, OnExit: ActionReboot, Grace: 2 * time.Second, Root: "serial:rootfs", RootFS: "squashfs"},
		{Transport: Transport{Kind: TransportSerial, Name: "ferry"}, Overlay: true, Upper: "serial:ferry-upper", OnExit: ActionReboot, Grace: 5 * time.Second},
		{Transport: Transport{Kind: TransportVsock, Port: 1024}, OnExit: ActionPoweroff, Grace: 5 * time.Second},
		{Transport: Transport{Kind: TransportFD, FD: 3}, Channels: 4, OnExit: ActionPoweroff, Grace: 5 * time.Second},
		{Transport: Transport{Kind: TransportUnix, Path: "/run/a dir/ferry.sock"}, OnExit: ActionPoweroff, Grace: 0},
	}
	for _, want := range cases {
		line := "console=ttyS0 quiet " + want.String() + " panic=-1"
		got, errs := ParseBootParams(line)
		if len(errs) != 0 {
			t.Fatalf("%s: %v", line, errs)
		}
		if want.Grace == 0 {
			want.Grace = DefaultBootParams().Grace // zero is "not given"
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s\n got %+v\nwant %+v", line, got, want)
		}
	}
}

// Only what is set is rendered, in a fixed order, as the qemu backend's
// command line shows it.
func TestBootParamsStringRendersWhatIsSet(t *testing.T) {
	if s := (BootParams{}).String(); s != "" {
		t.Fatalf("zero parameters rendered %q", s)
	}
	p := BootParams{Root: "serial:ferry-root", RootFS: "squashfs", Overlay: true, Transport: Transport{Kind: TransportSerial, Name: "ferry"}, OnExit: ActionReboot}
	want := "ferry.root=serial:ferry-root ferry.rootfstype=squashfs ferry.overlay=1 ferry.transport=serial:ferry ferry.shutdown=reboot"
	if s := p.String(); s != want {
		t.Fatalf("got  %q\nwant %q", s, want)
	}
	if s := (BootParams{Transport: Transport{Kind: TransportUnix, Path: "/a b"}}).String(); s != `ferry.transport="unix:/a b"` {
		t.Fatalf("quoted value: %q", s)
	}
}
