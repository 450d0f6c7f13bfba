package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"text/tabwriter"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/metrics"
)

// startAdmin serves the admin API (and the metrics) until ctx ends, with
// the same connection limits as the public listener.
func startAdmin(ctx context.Context, addr, token string, programs *front.Programs, mgr *lifecycle.Manager, met *metrics.Metrics,
	lim front.ConnLimits, log *slog.Logger) error {
	l, err := admin.Listen(addr, token)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: (&admin.Server{Programs: programs, Manager: mgr, Token: token, Log: log, Metrics: met.Handler()}).Handler()}
	lim.Apply(srv)
	go srv.Serve(l)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("admin API listening", "addr", addr)
	return nil
}

const programUsage = `usage: host-agent program [--admin ADDR] [--token T] [--json] COMMAND
  list                 programs and whether they run
  status ID            one program
  deploy ID FILE       add a program from a manifest (JSON)
  stop ID              stop its VM (the next request starts it again)
  restart ID           stop and start its VM
  logs ID              the program's recent output
  delete ID            stop and remove the program
`

func program(args []string) int {
	fs := flag.NewFlagSet("program", flag.ExitOnError)
	addr := fs.String("admin", admin.DefaultSocket, "admin API: unix socket path or host:port")
	token := fs.String("token", os.Getenv("FERRY_ADMIN_TOKEN"), "admin token (TCP)")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() { fmt.Fprint(os.Stderr, programUsage); fs.PrintDefaults() }
	// Flags may come before or after the command and its arguments.
	fs.Parse(args)
	var pos []string
	for fs.NArg() > 0 {
		pos = append(pos, fs.Arg(0))
		fs.Parse(fs.Args()[1:])
	}
	c := admin.NewClient(*addr, *token)
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
		var list []admin.Status
		err = c.Do("GET", "/v1/programs", nil, &list)
		out = list
		if err == nil && !*asJSON {
			tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
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
					fmt.Printf("%-11s %v\n", k+":", v)
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
			fmt.Fprintf(os.Stderr, "host-agent: %v\n", rerr)
			return 1
		}
		var res admin.Status
		err = c.Do("PUT", "/v1/programs/"+pos[1], bytes.NewReader(doc), &res)
		out = res
		if err == nil && !*asJSON {
			fmt.Printf("deployed %s (%s %s)\n", res.ID, res.Interface, res.Entrypoint)
			return 0
		}
	case "logs":
		if !need(2) {
			return 2
		}
		var lines []admin.LogLine
		err = c.Do("GET", "/v1/programs/"+pos[1]+"/logs", nil, &lines)
		out = lines
		if err == nil && !*asJSON {
			for _, l := range lines {
				fmt.Printf("%s %s[%d] %s\n", l.Time, l.Source, l.Origin, l.Line)
			}
			return 0
		}
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: %v\n", err)
		return 1
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(out)
	return 0
}
