package sysmon

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestEnviron(t *testing.T) {
	for _, tc := range []struct {
		in     []string
		want   []string
		change bool
	}{
		{[]string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + Setting}, true},
		{[]string{"GODEBUG=", "A=b"}, []string{"GODEBUG=" + Setting, "A=b"}, true},
		{[]string{"GODEBUG=http2client=0"}, []string{"GODEBUG=http2client=0," + Setting}, true},
		{[]string{"GODEBUG=gctrace=1", "GODEBUG=schedtrace=5"}, []string{"GODEBUG=gctrace=1," + Setting}, true},
		// The operator's own schedtrace, off or on, is kept.
		{[]string{"GODEBUG=schedtrace=0"}, []string{"GODEBUG=schedtrace=0"}, false},
		{[]string{"X=1", "GODEBUG=gctrace=1, schedtrace=1000"}, []string{"X=1", "GODEBUG=gctrace=1, schedtrace=1000"}, false},
	} {
		got, changed := Environ(tc.in)
		if changed != tc.change || !slices.Equal(got, tc.want) {
			t.Errorf("Environ(%q) = %q, %v; want %q, %v", tc.in, got, changed, tc.want, tc.change)
		}
	}
}

// childEnv marks the test binary run as the program KeepAwake re-executes.
const childEnv = "FERRY_SYSMON_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := KeepAwake(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		comm, _ := os.ReadFile("/proc/self/comm")
		fmt.Printf("%d %s %s %s\n", os.Getpid(), strings.TrimSpace(string(comm)), os.Getenv("GODEBUG"), strings.Join(os.Args[1:], " "))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// KeepAwake executes the program again in place: same PID, same
// arguments and name, GODEBUG with the setting.
func TestKeepAwakeReexecutesInPlace(t *testing.T) {
	c := reexecChild(t, os.Args[0], os.Args[0], "GODEBUG=gctrace=0", "extra-arg")
	// The process keeps its name (the kernel's comm, at most 15 bytes).
	if name := filepath.Base(os.Args[0]); !strings.HasPrefix(name, c.comm) {
		t.Errorf("the process is named %q after re-executing, want %q", c.comm, name)
	}
	if c.godebug != "gctrace=0,"+Setting {
		t.Errorf("GODEBUG after re-executing: %q", c.godebug)
	}
	if c.args != "-test.run=^$ extra-arg" {
		t.Errorf("arguments after re-executing: %q", c.args)
	}
}

// reexecd is what a child printed after re-executing.
type reexecd struct{ comm, godebug, args string }

// reexecChild runs the test binary at path, with argv0 as its argv[0],
// the environment without GODEBUG but for godebugEnv (if set) and args, as
// the program KeepAwake re-executes; it checks that the child ran again
// in place (same PID) and returns what it printed: its name (comm),
// GODEBUG and arguments.
func reexecChild(t *testing.T, path, argv0, godebugEnv string, args ...string) reexecd {
	t.Helper()
	cmd := exec.Command(path, append([]string{"-test.run=^$"}, args...)...)
	cmd.Args[0] = argv0
	cmd.Env = []string{childEnv + "=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if godebugEnv != "" {
		cmd.Env = append(cmd.Env, godebugEnv)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 4 {
		t.Fatalf("child printed %q", out)
	}
	if fields[0] != strconv.Itoa(cmd.Process.Pid) {
		t.Errorf("the program ran again as PID %s, started as %d: not in place", fields[0], cmd.Process.Pid)
	}
	return reexecd{comm: fields[1], godebug: fields[2], args: strings.Join(fields[3:], " ")}
}

// An agent started through a link (an installed host-agent pointing at a
// versioned file) keeps the link's name: the path it was started by is
// executed again, not the file the link resolves to.
func TestKeepAwakeThroughALinkKeepsItsName(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "agent-link")
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	if c := reexecChild(t, link, link, ""); c.comm != "agent-link" || c.godebug != Setting {
		t.Errorf("started as %s: named %q with GODEBUG %q after re-executing, want agent-link and %q", link, c.comm, c.godebug, Setting)
	}
}

// An argv[0] that names another file (a caller may set it to anything)
// is not what is executed: the running program's own file is.
func TestKeepAwakeIgnoresAForeignArgv0(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, argv0 := range []string{"/bin/true", "true", "no-such-program", ""} {
		if c := reexecChild(t, self, argv0, ""); c.godebug != Setting || !strings.HasPrefix(filepath.Base(self), c.comm) {
			t.Errorf("argv[0] %q: named %q with GODEBUG %q after re-executing, want the test binary with %q", argv0, c.comm, c.godebug, Setting)
		}
	}
}
