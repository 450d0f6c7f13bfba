package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// allocEnv makes this test binary a process that waits for a line on
// stdin, then allocates and touches 256 MiB.
const allocEnv = "FERRY_CGROUP_TEST_ALLOC"

func TestMain(m *testing.M) {
	if os.Getenv(allocEnv) != "" {
		var line [1]byte
		os.Stdin.Read(line[:])
		b := make([]byte, 256<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		fmt.Println(len(b))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func requireCgroups(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make cgroups")
	}
	if !Available() {
		t.Skip("no cgroup filesystem on this host")
	}
}

// A process over the group's memory limit is killed by the kernel, and the
// group counts the kill; the group is removed once empty.
func TestMemoryLimitKillsAndIsCounted(t *testing.T) {
	requireCgroups(t)
	g, err := New(fmt.Sprintf("test-%d-oom", os.Getpid()), Limits{MemoryBytes: 32 << 20, Pids: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Delete() })
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), allocEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	stdin.Write([]byte("go\n"))
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("a process allocating 256 MiB in a 32 MiB group ended with %v, want killed by SIGKILL", err)
	}
	kills, err := g.OOMKills()
	if err != nil || kills < 1 {
		t.Fatalf("OOM kills counted: %d, %v", kills, err)
	}
	if err := g.Delete(); err != nil {
		t.Fatalf("delete: %v", err)
	}
	for _, dir := range parentDirs() {
		if _, err := os.Stat(filepath.Join(dir, g.Name())); err == nil {
			t.Errorf("%s remains after Delete", filepath.Join(dir, g.Name()))
		}
		if entries, _ := os.ReadDir(dir); !hasGroups(entries) {
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("the empty parent %s remains after the last group's Delete", dir)
			}
		}
	}
}

// hasGroups reports whether a cgroup directory's entries hold a group.
func hasGroups(entries []os.DirEntry) bool {
	for _, e := range entries {
		if e.IsDir() {
			return true
		}
	}
	return false
}

// Sweep removes the groups it is told are stale, and only those.
func TestSweepRemovesOnlyStaleGroups(t *testing.T) {
	requireCgroups(t)
	stale, err := New(fmt.Sprintf("test-%d-stale", os.Getpid()), Limits{Pids: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stale.Delete() })
	kept, err := New(fmt.Sprintf("test-%d-kept", os.Getpid()), Limits{Pids: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kept.Delete() })
	if err := Sweep(func(name string) bool { return name == stale.Name() }); err != nil {
		t.Fatal(err)
	}
	for _, dir := range parentDirs() {
		if _, err := os.Stat(filepath.Join(dir, stale.Name())); err == nil {
			t.Errorf("stale group %s not swept", filepath.Join(dir, stale.Name()))
		}
		if _, err := os.Stat(filepath.Join(dir, kept.Name())); err != nil {
			t.Errorf("kept group %s swept: %v", filepath.Join(dir, kept.Name()), err)
		}
	}
}

func TestNewRefusesPathsForNames(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "x\x00"} {
		if _, err := New(name, Limits{}); err == nil {
			t.Errorf("New(%q) accepted a name that is a path", name)
		}
	}
}
