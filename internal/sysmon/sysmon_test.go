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
	cmd := exec.Command(os.Args[0], "-test.run=^$", "extra-arg")
	cmd.Env = append(os.Environ(), childEnv+"=1", "GODEBUG=gctrace=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 5 {
		t.Fatalf("child printed %q", out)
	}
	pid, comm, godebug, args := fields[0], fields[1], fields[2], strings.Join(fields[3:], " ")
	if pid != strconv.Itoa(cmd.Process.Pid) {
		t.Errorf("the program ran again as PID %s, started as %d: not in place", pid, cmd.Process.Pid)
	}
	// The process keeps its name (the kernel's comm, at most 15 bytes).
	if name := filepath.Base(os.Args[0]); !strings.HasPrefix(name, comm) {
		t.Errorf("the process is named %q after re-executing, want %q", comm, name)
	}
	if godebug != "gctrace=0,"+Setting {
		t.Errorf("GODEBUG after re-executing: %q", godebug)
	}
	if args != "-test.run=^$ extra-arg" {
		t.Errorf("arguments after re-executing: %q", args)
	}
}

// reexecChild runs the test binary at path with argv[0] as its first
// argument as the program KeepAwake re-executes, and returns its PID and
// what it printed after re-executing: its name (comm), GODEBUG and
// arguments.
func reexecChild(t *testing.T, path, argv0 string) (pid, comm, godebug string) {
	t.Helper()
	cmd := exec.Command(path, "-test.run=^$")
	cmd.Args[0] = argv0
	cmd.Env = []string{childEnv + "=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 4 {
		t.Fatalf("child printed %q", out)
	}
	if fields[0] != strconv.Itoa(cmd.Process.Pid) {
		t.Errorf("the program ran again as PID %s, started as %d: not in place", fields[0], cmd.Process.Pid)
	}
	return fields[0], fields[1], fields[2]
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
	if _, comm, godebug := reexecChild(t, link, link); comm != "agent-link" || godebug != Setting {
		t.Errorf("started as %s: named %q with GODEBUG %q after re-executing, want agent-link and %q", link, comm, godebug, Setting)
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
		if _, comm, godebug := reexecChild(t, self, argv0); godebug != Setting || !strings.HasPrefix(filepath.Base(self), comm) {
			t.Errorf("argv[0] %q: named %q with GODEBUG %q after re-executing, want the test binary with %q", argv0, comm, godebug, Setting)
		}
	}
}
