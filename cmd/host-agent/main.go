// Command host-agent runs on a compute node: it accepts HTTP, starts the VM
// of the addressed program and relays each request to it over the Ferry
// protocol.
//
// This build carries only the wire protocol (issue 2); the agent itself
// arrives with the host packages.
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
		fmt.Printf("ferry host-agent (protocol version %d)\n", message.ProtocolVersion)
		return
	}
	fmt.Fprintln(os.Stderr, "ferry host-agent: not implemented in this build yet; only -version works")
	os.Exit(2)
}
