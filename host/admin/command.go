package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/ferry-vm/ferry/internal/termtext"
)

// commandUsage is the usage of `host-agent program`.
const commandUsage = `usage: host-agent program [--admin ADDR] [--token T] [--json] COMMAND
  list                 programs and whether they run
  status ID            one program
  deploy ID FILE       add a program from a manifest (JSON)
  stop ID              stop its VM (the next request starts it again)
  restart ID           stop and start its VM
  logs [-f] [--since DURATION] [--raw] ID
                       the program's recent output (-f: then follow it, across restarts, until interrupted;
                       terminal controls are shown escaped, \x1b, unless --raw)
  event TOPIC [JSON]   post an event to the programs subscribed to TOPIC (JSON: its body)
  delete ID            stop and remove the program
  kv get ID KEY        a value of the program's key-value store
  kv put ID KEY VALUE  store a value (--fencing-token N: only while N is the program's token)
  kv delete ID KEY     remove a key (--fencing-token N as for put)
`

// clusterUsage is the usage of `host-agent cluster`.
const clusterUsage = `usage: host-agent cluster [--admin ADDR] [--token T] [--json] COMMAND
  status               the nodes (address, capacity, role, leader, last heartbeat) and where persistent programs run
  remove NAME          take a node out of the cluster (its persistent programs move once its lease runs out)
`

// Command runs `host-agent program ARGS...`, the admin API's command-line
// client: it calls the API of a serving agent and prints the answer (a
// table or lines, or the JSON with --json) on stdout, errors on stderr. It
// returns the exit status: 0, 1 when the call failed, 2 for a usage
// error.
func Command(args []string, stdout, stderr io.Writer) int {
	return command("program", commandUsage, args, stdout, stderr)
}

// ClusterCommand runs `host-agent cluster ARGS...` as Command runs
// program.
func ClusterCommand(args []string, stdout, stderr io.Writer) int {
	return command("cluster", clusterUsage, args, stdout, stderr)
}

// command runs the client of `host-agent NAME`.
func command(name, usage string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", DefaultSocket, "admin API: unix socket path or host:port")
	token := fs.String("token", os.Getenv("FERRY_ADMIN_TOKEN"), "admin token (TCP)")
	asJSON := fs.Bool("json", false, "print JSON")
	fencing := fs.Int64("fencing-token", 0, "kv put and delete: the program's fencing token the write is valid under")
	follow := fs.Bool("f", false, "logs: follow the output as it comes (NDJSON with --json)")
	since := fs.Duration("since", 0, "logs: only lines at most this old (e.g. 30s, 5m)")
	raw := fs.Bool("raw", false, "logs: print the lines' bytes as the program wrote them, terminal controls included (by default they are shown escaped: \\x1b)")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
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
	verb := pos[0]
	if name == "cluster" {
		verb = "cluster " + verb
	}
	switch verb {
	case "cluster status":
		if !need(1) {
			return 2
		}
		var st ClusterStatus
		err = c.Do("GET", "/v1/cluster", nil, &st)
		out = st
		if err == nil && !*asJSON {
			printCluster(stdout, &st)
			return 0
		}
	case "cluster remove":
		if !need(2) {
			return 2
		}
		var res map[string]string
		err = c.Do("DELETE", "/v1/cluster/nodes/"+pos[1], nil, &res)
		out = res
		if err == nil && !*asJSON {
			fmt.Fprintf(stdout, "removed %s\n", pos[1])
			return 0
		}
	case "kv":
		return kvCommand(c, pos, *fencing, stdout, stderr, fs.Usage)
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
			for _, k := range []string{"id", "deleted", "interface", "entrypoint", "running", "vm", "node", "token", "ipv4", "ipv6", "started", "timeline", "last_boot_error", "last_boot_error_at"} {
				if v, ok := res[k]; ok && v != "" {
					fmt.Fprintf(stdout, "%-11s %s\n", k+":", termtext.Visible(fmt.Sprint(v)))
				}
			}
			printTriggers(stdout, res["triggers"])
			return 0
		}
	case "deploy":
		if !need(3) {
			return 2
		}
		doc, rerr := os.ReadFile(pos[2])
		if rerr != nil {
			printError(stderr, rerr)
			return 1
		}
		var res Status
		err = c.Do("PUT", "/v1/programs/"+pos[1], bytes.NewReader(doc), &res)
		out = res
		if err == nil && !*asJSON {
			fmt.Fprintf(stdout, "deployed %s (%s %s)\n", res.ID, res.Interface, res.Entrypoint)
			return 0
		}
	case "event":
		if len(pos) != 2 && len(pos) != 3 {
			fs.Usage()
			return 2
		}
		var res map[string]any
		res, err = postEvent(c, pos[1:])
		out = res
		if err == nil && !*asJSON {
			fmt.Fprintf(stdout, "event %v to %v\n", res["event"], res["programs"])
			return 0
		}
	case "logs":
		if !need(2) {
			return 2
		}
		path := logsPath(pos[1], *since, *follow)
		if *follow {
			return followLogs(c, path, *asJSON, *raw, stdout, stderr)
		}
		var lines []LogLine
		err = c.Do("GET", path, nil, &lines)
		out = lines
		if err == nil && !*asJSON {
			for _, l := range lines {
				printLogLine(stdout, l, *raw)
			}
			return 0
		}
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		printError(stderr, err)
		return 1
	}
	doc, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		printError(stderr, err)
		return 1
	}
	stdout.Write(append(termtext.AppendJSONVisible(nil, doc), '\n'))
	return 0
}

// printCluster prints the cluster's status for people.
func printCluster(w io.Writer, st *ClusterStatus) {
	fmt.Fprintf(w, "node %s, leader %s, lease %s\n\n", st.Node, st.Leader, st.Lease)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tVCPUS\tMEMORY\tROLE\tLEADER\tLAST HEARTBEAT")
	for _, n := range st.Nodes {
		beat := "-"
		if n.LastHeartbeat >= 0 {
			beat = fmt.Sprintf("%.1fs ago", n.LastHeartbeat)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d MiB\t%s\t%v\t%s\n", n.Name, n.Address, n.Capacity.VCPUs, n.Capacity.MemoryMiB, n.Role, n.Leader, beat)
	}
	tw.Flush()
	if len(st.Programs) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PERSISTENT PROGRAM\tNODE\tTOKEN")
		for _, a := range st.Programs {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", a.Program, a.Node, a.Token)
		}
		tw.Flush()
	}
}

// kvCommand runs `program kv get|put|delete ID KEY [VALUE]`.
func kvCommand(c *Client, pos []string, fencing int64, stdout, stderr io.Writer, usage func()) int {
	if len(pos) < 4 {
		usage()
		return 2
	}
	op, id, key := pos[1], pos[2], pos[3]
	path := "/v1/programs/" + url.PathEscape(id) + "/kv/" + url.PathEscape(key)
	if fencing != 0 {
		path += "?token=" + strconv.FormatInt(fencing, 10)
	}
	var err error
	switch {
	case op == "get" && len(pos) == 4:
		var value []byte
		value, err = c.Get(path)
		if err == nil {
			stdout.Write(value)
			return 0
		}
	case op == "put" && len(pos) == 5:
		err = c.Do("PUT", path, strings.NewReader(pos[4]), nil)
	case op == "delete" && len(pos) == 4:
		err = c.Do("DELETE", path, nil, nil)
	default:
		usage()
		return 2
	}
	if err != nil {
		printError(stderr, err)
		return 1
	}
	return 0
}
