// Package app defines how init runs the user's program and hands it
// request streams, and holds what its two runners share: the App interface
// and its Factory, the program's environment, starting and stopping its
// processes (Process), and capturing their output a line at a time
// (Output, OutputTail). The runners are its subpackages: asgi (a pool of
// Python workers) and executable (a program serving HTTP on PORT).
package app

import (
	"context"
	"sort"
	"strconv"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// App serves the request streams of a configured program.
type App interface {
	// Serve handles one stream; it returns when the stream is finished.
	Serve(ctx context.Context, st *mux.Stream)
	// Stop stops the program, gracefully within ctx, then by force.
	Stop(ctx context.Context) error
}

// Factory starts an App for a configuration. The program's output lines go
// to out. A program that cannot start is a *contract.ConfigError: the
// phase and field at fault, a one-line message and the detail (a
// traceback, the last output lines).
type Factory func(ctx context.Context, c *contract.Config, codeDir string, out Output) (App, error)

// Env returns the program's environment: a minimal base, the configured
// variables, and PORT for executables.
func Env(c *contract.Config) []string {
	env := map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME": "/root",
		"LANG": "C.UTF-8",
	}
	for k, v := range c.Env {
		env[k] = v
	}
	if c.Interface == contract.InterfaceExecutable {
		env["PORT"] = strconv.Itoa(c.ExecutablePort())
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}
