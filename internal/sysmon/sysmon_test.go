package sysmon

import (
	"fmt"
	"os"
	"os/exec"
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
		fmt.Printf("%d %s %s\n", os.Getpid(), os.Getenv("GODEBUG"), strings.Join(os.Args[1:], " "))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// KeepAwake executes the program again in place: same PID, same
// arguments, GODEBUG with the setting; and once it is set, not again.
func TestKeepAwakeReexecutesInPlace(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "extra-arg")
	cmd.Env = append(os.Environ(), childEnv+"=1", "GODEBUG=gctrace=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 4 {
		t.Fatalf("child printed %q", out)
	}
	if pid, _ := strconv.Atoi(fields[0]); pid != cmd.Process.Pid {
		t.Errorf("the program ran again as PID %d, started as %d: not in place", pid, cmd.Process.Pid)
	}
	if fields[1] != "gctrace=0,"+Setting {
		t.Errorf("GODEBUG after re-executing: %q", fields[1])
	}
	if args := strings.Join(fields[2:], " "); args != "-test.run=^$ extra-arg" {
		t.Errorf("arguments after re-executing: %q", args)
	}
}
