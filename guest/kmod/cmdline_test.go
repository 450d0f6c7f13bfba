package kmod

import "testing"

func TestModuleParamsAreTakenFromTheCommandLine(t *testing.T) {
	cmdline := `console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 virtio_mmiox.bad=1 ferry.debug "virtio_mmio.quoted=a b"`
	got := CmdlineParams(cmdline, "virtio-mmio")
	want := `device=512@0xfeb00e00:12 device=512@0xfeb00c00:11 quoted="a b"`
	if got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if got := CmdlineParams(cmdline, "squashfs"); got != "" {
		t.Fatalf("squashfs got %q", got)
	}
}
