package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/bench"
)

// TestBenchHarnessRunsAllDesigns runs make bench's harness briefly (hello
// world, one process, two interleaved rounds, one cold start per app), so
// that `make bench` keeps working: uvicorn, nginx in front of it, Ferry,
// the msgpack design and the event-loop prototype (-prototype) each answer wrk's
// requests without errors, every process of each design is measured, and
// the cold start comes with init's timeline.
func TestBenchHarnessRunsAllDesigns(t *testing.T) {
	requirePythonModules(t, "uvicorn", "httptools", "uvloop", "msgpack", "fastapi")
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk is missing (bash .ci/run installs it)")
	}
	const nginx = "/usr/sbin/nginx"
	if _, err := os.Stat(nginx); err != nil {
		t.Skip("nginx is missing for design A′ (bash .ci/run installs Debian's nginx-light)")
	}
	agentBin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	self, err := goBuildInto(t.TempDir(), "ferry-bench", "../cmd/ferry-bench")
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	cfg := bench.Config{Python: debianPython, Nginx: nginx, HostAgent: agentBin, Init: filepath.Join(filepath.Dir(agentBin), "init"),
		Self: self, WorkDir: t.TempDir(), Duration: time.Second, Rounds: 2, Connections: 8, Procs: []int{1}, ColdStarts: 1,
		Only: "hello,cold", Prototype: true, Progress: &progress}
	rep, err := bench.Run(t.Context(), cfg)
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"A": {"python3"}, "A′": {"nginx", "python3"}, "B": {"host-agent", "init", "python3"}, "N": {"host-agent", "init", "python3"}, "C": {"python3", "ferry-bench"}, "E": {"ferry-bench", "python3"}}
	seen := map[string]bool{}
	for _, r := range rep.Results {
		if r.Err != nil {
			t.Fatalf("%s %s: %v", r.Design, r.Workload.Key, r.Err)
		}
		if r.Load.Requests == 0 || r.CPUSeconds <= 0 || len(r.Rates) != 2 {
			t.Fatalf("%s %s: %d requests, %.2f CPU seconds, rounds %v", r.Design, r.Workload.Key, r.Load.Requests, r.CPUSeconds, r.Rates)
		}
		var names []string
		for _, m := range r.Memory {
			names = append(names, m.Name)
		}
		for _, name := range want[r.Design] {
			if !strings.Contains(strings.Join(names, " "), name) {
				t.Fatalf("%s %s: no memory for %s among %v", r.Design, r.Workload.Key, name, names)
			}
		}
		seen[r.Design+" "+r.Workload.Key] = true
	}
	for _, d := range []string{"A", "A′", "B", "N", "C", "E"} {
		for _, w := range []string{"hello", "hello-1conn"} {
			if !seen[d+" "+w] {
				t.Fatalf("no result for %s %s", d, w)
			}
		}
	}
	if len(rep.ColdStarts) != 2 {
		t.Fatalf("%d cold start series, want 2", len(rep.ColdStarts))
	}
	for _, cs := range rep.ColdStarts {
		var phases []string
		for _, p := range cs.Phases {
			phases = append(phases, p.Phase)
		}
		if len(cs.Runs) != 1 || cs.BareImport <= 0 || !strings.Contains(strings.Join(phases, " "), "app") {
			t.Fatalf("cold start of %s: %d runs, bare import %v, phases %v", cs.ID, len(cs.Runs), cs.BareImport, phases)
		}
		if total := cs.Runs[0].Total; total < cs.Runs[0].Boot {
			t.Fatalf("cold request %v shorter than the boot %v", total, cs.Runs[0].Boot)
		}
	}
	var md bytes.Buffer
	rep.Markdown(&md)
	for _, s := range []string{"### plain ASGI hello world", "### Cold start", "### Targets", fmt.Sprintf("%d cores", rep.Machine.Cores)} {
		if !strings.Contains(md.String(), s) {
			t.Fatalf("report lacks %q:\n%s", s, md.String())
		}
	}
	if testing.Verbose() {
		os.Stdout.Write(md.Bytes())
	}
}
