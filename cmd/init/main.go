// Command init is Ferry's PID 1 inside a microVM. It mounts the system,
// loads the kernel modules it needs, listens on the transport named on the
// kernel command line, takes its configuration from the host, starts the
// user's program and serves requests; on SIGTERM or a GOAWAY from the host
// it stops the program, unmounts and powers off. The stages are
// guest/initsys's.
//
// Run by hand (not as PID 1) it mounts nothing and never powers off, so the
// app path can be exercised anywhere:
//
//	init -transport unix:/tmp/ferry.sock
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/initsys"
	"github.com/ferry-vm/ferry/protocol/message"
)

const agent = "ferry-init/0.1"

func main() {
	var tl boot.Timeline
	tl.Mark("kernel")
	initsys.TuneRuntime()

	version := flag.Bool("version", false, "print the version and exit")
	transport := flag.String("transport", "", "vsock:PORT, serial:NAME, fd:N or unix:PATH (default: ferry.transport from the kernel command line)")
	cmdline := flag.String("cmdline", "", "read ferry.* parameters from this string instead of /proc/cmdline")
	debug := flag.Bool("debug", false, "debug logs")
	hostUDS := flag.String("host-uds", "", "stand-in for the vsock device, as Firecracker's uds_path: connections to host port P go to the unix socket PATH_P (turns on the reference runtime's mode)")
	alephShell := flag.Bool("aleph-shell", false, "serve the reference protocol's !command instructions")
	flag.Parse()
	if *version {
		fmt.Printf("%s (protocol version %d)\n", agent, message.ProtocolVersion)
		return
	}

	in, err := initsys.Load(initsys.Options{PID1: os.Getpid() == 1, Cmdline: *cmdline, Transport: *transport, Debug: *debug, Agent: agent, HostUDS: *hostUDS, AlephShell: *alephShell}, &tl)
	if err != nil {
		fmt.Fprintf(os.Stderr, "init: %v\n", err)
		os.Exit(2)
	}
	if in.InInitramfs() {
		in.SwitchRoot() // returns only if the root image is unusable
		in.PowerOff()
	}
	in.ResumeTimeline()
	shutdown, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := in.Run(shutdown)
	stop()
	if !in.PID1 {
		os.Exit(code)
	}
	in.PowerOff()
}
