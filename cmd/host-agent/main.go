// Command host-agent runs on a compute node: it accepts HTTP, starts the VM
// of the addressed program and relays each request to it over the Ferry
// protocol. The agent itself is host/daemon; this is its command line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/backend/sandbox"
	"github.com/ferry-vm/ferry/host/daemon"
	"github.com/ferry-vm/ferry/internal/sysmon"
	"github.com/ferry-vm/ferry/internal/termtext"
	"github.com/ferry-vm/ferry/protocol/message"
)

const usage = `usage:
  host-agent run [flags] CODE_DIR ENTRYPOINT   serve one program at / (like uvicorn main:app)
  host-agent serve --config FILE [flags]       serve the programs of a configuration file (SIGHUP re-reads it)
  host-agent program COMMAND ...               manage a serving agent (list, status, deploy, stop, restart, logs, delete, kv)
  host-agent cluster COMMAND ...               the cluster of a serving agent (status, remove)
  host-agent -version
`

func main() {
	sandbox.RunStageIfRequested() // the sandbox's first stage is this binary, re-executed
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "-version", "--version", "version":
		fmt.Printf("ferry host-agent (protocol version %d)\n", message.ProtocolVersion)
	case "run":
		keepSysmonAwake()
		os.Exit(agent("run", daemon.RunFlags, os.Args[2:]))
	case "serve":
		keepSysmonAwake()
		os.Exit(agent("serve", daemon.ServeFlags, os.Args[2:]))
	case "program":
		os.Exit(admin.Command(os.Args[2:], os.Stdout, os.Stderr))
	case "cluster":
		os.Exit(admin.ClusterCommand(os.Args[2:], os.Stdout, os.Stderr))
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}

// keepSysmonAwake re-executes the agent in place with the runtime's
// sysmon kept out of its deep sleep (internal/sysmon says why; GODEBUG=
// schedtrace=0 turns it off). A failure only costs speed.
func keepSysmonAwake() {
	if err := sysmon.KeepAwake(); err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: %v; going on with the Go runtime's defaults\n", err)
	}
}

// agent parses the flags of run or serve and runs the agent until SIGINT
// or SIGTERM (then it drains); serve re-reads its configuration on SIGHUP.
// It returns the exit status.
func agent(name string, register func(*flag.FlagSet) *daemon.Flags, args []string) int {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	flags := register(fs)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	fs.Parse(args)
	cfg, err := flags.Config(fs.Args())
	if errors.Is(err, daemon.ErrUsage) {
		fs.Usage()
		return 2
	}
	if err == nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if cfg.ConfigPath != "" {
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			cfg.Reload = hup
		}
		err = daemon.Serve(ctx, cfg)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "host-agent: %s\n", termtext.Visible(err.Error())) // may quote the app
	if errors.As(err, new(*daemon.ConfigError)) {
		return 2
	}
	return 1
}
