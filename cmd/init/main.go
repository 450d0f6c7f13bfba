// Command init is Ferry's PID 1 inside a microVM. It mounts the system,
// configures the network, starts the user's program and serves requests
// from the host over the Ferry protocol.
//
// This build carries only the wire protocol (issue 2); booting, configuration
// and the app runners arrive with the guest packages.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ferry-vm/ferry/protocol/message"
)

func main() {
	version := flag.Bool("version", false, "print the version and protocol version, then exit")
	flag.Parse()
	if *version {
		fmt.Printf("ferry init (protocol version %d)\n", message.ProtocolVersion)
		return
	}
	fmt.Fprintln(os.Stderr, "ferry init: the guest runtime is not implemented in this build yet; only -version works")
	os.Exit(2)
}
