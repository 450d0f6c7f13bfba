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
