// Package contract is what the host agent and init must agree on, in one
// place both import (as firecracker-containerd's proto/ and kata's
// libs/protocols hold what their host and guest share): the configuration
// document of the CONFIG frame with its validation (config.go), the
// structured error a CONFIG_RESULT carries (errors.go), the client side of
// the configuration exchange (configure.go), init's ferry.* kernel
// command-line parameters (bootparams.go), and the names and limits
// below. The frames and their encodings stay in protocol/frame,
// protocol/message and protocol/mux; this package is the meaning of what
// travels in them.
//
// The host builds a *Config and validates it before it goes on the wire;
// init parses and validates the same type. Neither side's packages import
// the other's.
package contract

import "regexp"

// Interfaces a program can have: how init runs it and hands it requests.
const (
	// InterfaceASGI is a Python ASGI app (entrypoint module:attribute),
	// served by init's pool of Python workers; websockets are ASGI's.
	InterfaceASGI = "asgi"
	// InterfaceExecutable is any program that serves HTTP/1.1 on the
	// port init gives it in PORT; upgrades pass through as raw bytes.
	InterfaceExecutable = "executable"
	// InterfaceInstance is an instance: a VM with no app, no entrypoint
	// and no code, where init keeps sshd running for the configuration's
	// authorized keys (README "Instances"). It serves no request streams.
	InterfaceInstance = "instance"
)

// DefaultCodeDir is where a program's code is inside the guest: init
// mounts, extracts or copies it there, and backends that bind the code
// themselves (the sandbox) put it there too.
const DefaultCodeDir = "/opt/code"

// DefaultInterface is the guest's network interface configured when the
// configuration names none; backends name the VM's end of its link so.
const DefaultInterface = "eth0"

// Limits both sides rely on.
const (
	// MaxWebSocketMessage bounds one websocket message from a client:
	// the agent closes a larger one with 1009 and so does the ASGI worker
	// (worker.py's MAX_WS_MESSAGE, checked against this by a test).
	// Messages cross part by part, so this bounds no buffer: it is the
	// limit an app may rely on.
	MaxWebSocketMessage = 16 << 20
	// MaxStreams is how many request streams init accepts at once on its
	// session with the host; the agent never lets one program have more
	// requests in flight.
	MaxStreams = 1024
)

// idPattern is what a program id may look like: usable as a DNS label
// and a path segment.
var idPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidID reports whether id is a safe program identifier: 1 to 63
// lower-case letters, digits and '-', not starting or ending with '-'.
func ValidID(id string) bool { return idPattern.MatchString(id) }
