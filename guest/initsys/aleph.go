package initsys

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/alephcompat"
	"github.com/ferry-vm/ferry/guest/service"
	"github.com/ferry-vm/ferry/guest/setup"
	"github.com/ferry-vm/ferry/guest/transport"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// ShellMarker is the file whose presence in the image enables the
// reference protocol's `!command` instructions; without it they are
// refused.
const ShellMarker = "/etc/ferry/aleph-shell"

// hasFerryParams reports whether a kernel command line carries any
// ferry.* parameter. Without one, init was booted as the reference
// runtime's init (Firecracker under aleph-vm's supervisor): Ferry's own
// backends always pass ferry.transport.
func hasFerryParams(cmdline string) bool {
	for _, w := range contract.SplitCmdline(cmdline) {
		if strings.HasPrefix(w, "ferry.") {
			return true
		}
	}
	return false
}

// referenceDefaults are the boot parameters of the reference runtime's
// image: vsock port 52, the read-only root made writable by a tmpfs
// overlay (init0.sh), and a reboot to end (Firecracker has no ACPI power
// off; its VMM exits when the guest reboots, as init1.py ends).
func referenceDefaults(p *contract.BootParams) {
	p.Transport = contract.Transport{Kind: contract.TransportVsock, Port: alephcompat.Port}
	p.Overlay = true
	p.OnExit = contract.ActionReboot
}

// sniffs reports whether the transport t is a listener that serves the
// reference protocol beside Ferry's: vsock and unix sockets take many
// connections; an inherited descriptor or a serial port is one Ferry
// session.
func sniffs(t contract.Transport) bool {
	return t.Kind == contract.TransportVsock || t.Kind == contract.TransportUnix
}

// isFerry reports whether a connection is Ferry's by its first byte:
// every byte that does not begin a connection of the reference protocol
// (a length line's digit, "halt", "!", a msgpack map: protocol/SPEC.md
// §3.5). HELLO's 0x01 is one; any other goes to Ferry's side too, which
// answers what is not a HELLO with a GOAWAY naming the error.
func isFerry(first byte) bool {
	switch {
	case first >= '0' && first <= '9', first == 'h', first == '!',
		first >= 0x80 && first <= 0x8f, first == 0xde, first == 0xdf:
		return false
	}
	return true
}

// alephFront is the reference protocol's side of init: the server, and
// in the reference mode the guest API bridge.
type alephFront struct {
	server *alephcompat.Server
	bridge *alephcompat.Bridge
}

// apiSocket is where the guest API bridge listens: the reference's path
// as PID 1, under the scratch directory by hand.
func (in *Init) apiSocket(paths setup.Paths) string {
	if in.PID1 {
		return alephcompat.APISocket
	}
	return filepath.Join(paths.Root, "socat-socket")
}

// listenAleph wraps l so that the reference protocol's connections go to
// a compat server driving svc, and, in the reference mode, signals the
// supervisor and opens the guest API bridge. Without a usable server l
// is returned as it is.
func (in *Init) listenAleph(ctx context.Context, svc *service.Service, paths setup.Paths, l transport.Listener) (transport.Listener, *alephFront) {
	_, shell := os.Stat(ShellMarker)
	srv, err := alephcompat.New(alephcompat.Options{
		Configure: svc.ApplyDocument,
		Serve:     svc.ServeStream,
		Halt:      func() error { return in.halt(svc) },
		Shutdown:  svc.RequestShutdown,
		Scratch:   filepath.Join(paths.Root, "run/aleph"),
		DataDir:   paths.Data,
		APISocket: in.apiSocket(paths),
		Shell:     (in.PID1 && shell == nil) || in.AlephShell,
		Agent:     in.Agent,
		Log:       in.Log,
	})
	if err != nil {
		in.Log.Warn("cannot serve the reference protocol", "err", err)
		return l, nil
	}
	front := &alephFront{server: srv}
	sniffed := transport.Sniff(ctx, l, isFerry, srv.ServeConn, in.Log)
	if !in.Aleph {
		return sniffed, front
	}
	d := transport.HostDialer{UDS: in.HostUDS}
	if b, err := alephcompat.ListenBridge(in.apiSocket(paths), d, in.Log); err != nil {
		in.Log.Warn("no guest API bridge", "err", err)
	} else {
		front.bridge = b
	}
	go func() {
		if err := alephcompat.SignalReady(ctx, d, in.Log); err != nil {
			in.Log.Error("the supervisor did not take the ready signal", "err", err)
		} else {
			in.Log.Info("ready signal sent", "host", d.String())
		}
	}()
	return sniffed, front
}

// leftoverPatience bounds how long halt waits for the processes it ends
// after the program's stop to be gone.
const leftoverPatience = 5 * time.Second

// halt stops the program and unmounts its volumes for the supervisor's
// halt. As PID 1 it then ends every process left and waits until they are
// gone: a process the program started in a session of its own escapes
// the stop of its process group, and a file it holds open on a volume
// keeps that volume's filesystem open (the unmount only detaches it) until
// it exits. So the volumes are closed for real before the supervisor,
// told so, kills the VM.
func (in *Init) halt(svc *service.Service) error {
	err := svc.Stop(in.Params.Grace)
	if !in.PID1 {
		return err
	}
	if unix.Kill(-1, 0) == nil {
		in.Log.Info("ending the processes left after the program")
	}
	in.stopEverything()
	ctx, cancel := context.WithTimeout(context.Background(), leftoverPatience)
	defer cancel()
	if werr := waitAlone(ctx); werr != nil {
		in.Log.Warn("processes are left after the halt", "err", werr)
	}
	return err
}

// waitAlone waits until PID 1 is the only process left (the reaper
// collects the others), or ctx ends.
func waitAlone(ctx context.Context) error {
	for {
		if err := unix.Kill(-1, 0); errors.Is(err, unix.ESRCH) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the last processes to exit: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// close stops the bridge and the server.
func (f *alephFront) close() {
	if f == nil {
		return
	}
	if f.bridge != nil {
		f.bridge.Close()
	}
	f.server.Close()
}

// console is where program output goes in the reference mode: init's
// standard output, the VM's console the supervisor reads.
func (in *Init) console() io.Writer {
	if in.Aleph {
		return os.Stdout
	}
	return nil
}
