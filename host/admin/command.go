package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

// commandUsage is the usage of `host-agent program`.
const commandUsage = `usage: host-agent program [--admin ADDR] [--token T] [--json] COMMAND
  list                 programs and whether they run
  status ID            one program
  deploy ID FILE       add a program from a manifest (JSON)
  stop ID              stop its VM (the next request starts it again)
  restart ID           stop and start its VM
  logs ID              the program's recent output
  delete ID            stop and remove the program
`

// Command runs `host-agent program ARGS...`, the admin API's command-line
// client: it calls the API of a serving agent and prints the answer (a
// table or lines, or the JSON with --json) on stdout, errors on stderr. It
// returns the exit status: 0, 1 when the call failed, 2 for a usage
// error.
func Command(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("program", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", DefaultSocket, "admin API: unix socket path or host:port")
	token := fs.String("token", os.Getenv("FERRY_ADMIN_TOKEN"), "admin token (TCP)")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() { fmt.Fprint(stderr, commandUsage); fs.PrintDefaults() }
	// Flags may come before or after the command and its arguments.
	var pos []string
	for err := fs.Parse(args); ; err = fs.Parse(fs.Args()[1:]) {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
	}
	c := NewClient(*addr, *token)
	need := func(n int) bool {
		if len(pos) != n {
			fs.Usage()
			return false
		}
		return true
	}
	if len(pos) == 0 {
		fs.Usage()
		return 2
	}
	var out any
	var err error
	switch verb := pos[0]; verb {
	case "list":
		if !need(1) {
			return 2
		}
		var list []Status
		err = c.Do("GET", "/v1/programs", nil, &list)
		out = list
		if err == nil && !*asJSON {
			tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tINTERFACE\tENTRYPOINT\tHTTP\tPERSISTENT\tRUNNING\tVM")
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%v\t%s\n", s.ID, s.Interface, s.Entrypoint, s.HTTP, s.Persistent, s.Running, s.VM)
			}
			tw.Flush()
			return 0
		}
	case "status", "stop", "restart", "delete":
		if !need(2) {
			return 2
		}
		call := map[string]struct{ method, suffix string }{
			"status": {"GET", ""}, "stop": {"POST", "/stop"}, "restart": {"POST", "/restart"}, "delete": {"DELETE", ""},
		}[verb]
		var res map[string]any
		err = c.Do(call.method, "/v1/programs/"+pos[1]+call.suffix, nil, &res)
		out = res
		if err == nil && !*asJSON {
			for _, k := range []string{"id", "deleted", "interface", "entrypoint", "running", "vm", "ipv4", "ipv6", "started", "timeline"} {
				if v, ok := res[k]; ok && v != "" {
					fmt.Fprintf(stdout, "%-11s %v\n", k+":", v)
				}
			}
			return 0
		}
	case "deploy":
		if !need(3) {
			return 2
		}
		doc, rerr := os.ReadFile(pos[2])
		if rerr != nil {
			fmt.Fprintf(stderr, "host-agent: %v\n", rerr)
			return 1
		}
		var res Status
		err = c.Do("PUT", "/v1/programs/"+pos[1], bytes.NewReader(doc), &res)
		out = res
		if err == nil && !*asJSON {
			fmt.Fprintf(stdout, "deployed %s (%s %s)\n", res.ID, res.Interface, res.Entrypoint)
			return 0
		}
	case "logs":
		if !need(2) {
			return 2
		}
		var lines []LogLine
		err = c.Do("GET", "/v1/programs/"+pos[1]+"/logs", nil, &lines)
		out = lines
		if err == nil && !*asJSON {
			for _, l := range lines {
				fmt.Fprintf(stdout, "%s %s[%d] %s\n", l.Time, l.Source, l.Origin, l.Line)
			}
			return 0
		}
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "host-agent: %v\n", err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	enc.Encode(out)
	return 0
}
