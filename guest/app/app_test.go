package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/contract"
)

func TestEnv(t *testing.T) {
	base := []string{"HOME=/root", "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, tc := range []struct {
		name string
		c    contract.Config
		want []string
	}{
		{"asgi: the base only", contract.Config{Interface: contract.InterfaceASGI}, base},
		{"executable: PORT defaults to 8080", contract.Config{Interface: contract.InterfaceExecutable},
			[]string{"HOME=/root", "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PORT=8080"}},
		{"executable: the configured port", contract.Config{Interface: contract.InterfaceExecutable, Port: 9000},
			[]string{"HOME=/root", "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PORT=9000"}},
		{"variables are added and override the base, sorted", contract.Config{Interface: contract.InterfaceASGI, Env: map[string]string{"ZED": "z", "HOME": "/home/app", "A": "1"}},
			[]string{"A=1", "HOME=/home/app", "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ZED=z"}},
		{"PORT is the configuration's, not a variable's", contract.Config{Interface: contract.InterfaceExecutable, Port: 81, Env: map[string]string{"PORT": "1"}},
			[]string{"HOME=/root", "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PORT=81"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Env(&tc.c); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Env = %q, want %q", got, tc.want)
			}
		})
	}
}

// lineRecorder is an Output that keeps every line.
type lineRecorder struct {
	mu    sync.Mutex
	lines []string // "source origin line"
}

func (r *lineRecorder) Line(source string, origin int, line []byte) {
	r.mu.Lock()
	r.lines = append(r.lines, fmt.Sprintf("%s %d %s", source, origin, line))
	r.mu.Unlock()
}

func (r *lineRecorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

// testReaper reaps the children of the test binary (every one: start
// them through it).
var testReaper *reaper.Reaper

func TestMain(m *testing.M) {
	r, err := reaper.New(slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go r.Run(context.Background())
	testReaper = r
	os.Exit(m.Run())
}

// startScript starts a shell script with the given body, its argv[0]
// relative to its own new directory, as spec says otherwise.
func startScript(t *testing.T, body string, spec ProcessSpec) *Process {
	t.Helper()
	spec.Dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(spec.Dir, "prog"), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	spec.Argv = append([]string{"prog"}, spec.Argv...)
	p, err := StartProcess(testReaper, slog.New(slog.DiscardHandler), spec)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitDone(t *testing.T, p *Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the process did not end")
	}
}

// A process's stdout and stderr arrive line by line, with its origin,
// before Done; it runs in its directory with its environment, its argv[0]
// relative to that directory; Exit says how it ended.
func TestProcessCapturesOutputAndExit(t *testing.T) {
	out := &lineRecorder{}
	p := startScript(t, `echo "out $GREETING $1"; echo err >&2; printf 'no newline'; pwd >&2; exit 3`,
		ProcessSpec{Argv: []string{"arg"}, Env: []string{"GREETING=hello"}, Output: out, Origin: 7})
	waitDone(t, p)
	if code := p.Exit().Code(); code != 3 {
		t.Fatalf("exit %s, want status 3", p.Exit())
	}
	got := map[string]bool{}
	for _, l := range out.get() {
		got[l] = true
	}
	realDir, _ := filepath.EvalSymlinks(p.cmd.Dir)
	for _, want := range []string{"stdout 7 out hello arg", "stderr 7 err", "stdout 7 no newline", "stderr 7 " + realDir} {
		if !got[want] {
			t.Errorf("missing line %q in %q", want, out.get())
		}
	}
}

// A line longer than MaxLineLength comes in pieces of MaxLineLength.
func TestProcessSplitsLongLines(t *testing.T) {
	out := &lineRecorder{}
	n := MaxLineLength + 100
	p := startScript(t, "head -c "+strconv.Itoa(n)+" /dev/zero | tr '\\0' x; echo", ProcessSpec{Output: out})
	waitDone(t, p)
	lines := out.get()
	if len(lines) != 2 || len(lines[0]) != len("stdout 0 ")+MaxLineLength || len(lines[1]) != len("stdout 0 ")+100 {
		t.Fatalf("%d lines of %v bytes", len(lines), lengths(lines))
	}
}

func lengths(lines []string) []int {
	var n []int
	for _, l := range lines {
		n = append(n, len(l))
	}
	return n
}

// A program that does not exist is an error, not a process.
func TestStartProcessOfAMissingProgram(t *testing.T) {
	_, err := StartProcess(testReaper, slog.New(slog.DiscardHandler), ProcessSpec{Argv: []string{"missing"}, Dir: t.TempDir(), Output: DiscardOutput{}})
	if err == nil || !strings.Contains(err.Error(), "starting missing") {
		t.Fatalf("err %v", err)
	}
}

// Stop ends the whole process group: SIGTERM first, then SIGKILL for a
// process that ignores it once ctx ends.
func TestProcessStop(t *testing.T) {
	t.Run("SIGTERM", func(t *testing.T) {
		// The child's own child is stopped with it (same process group).
		out := &lineRecorder{}
		p := startScript(t, "sleep 60 & echo $!; wait", ProcessSpec{Output: out})
		grandchild := waitPid(t, out)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if !p.Exit().Status.Signaled() || p.Exit().Status.Signal() != syscall.SIGTERM {
			t.Fatalf("exit %s, want killed by SIGTERM", p.Exit())
		}
		waitGone(t, grandchild)
	})
	t.Run("SIGKILL", func(t *testing.T) {
		out := &lineRecorder{}
		p := startScript(t, "trap '' TERM; echo $$; while :; do sleep 0.01; done", ProcessSpec{Output: out})
		waitPid(t, out) // the trap is set
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := p.Stop(ctx)
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("Stop: %v, want killed", err)
		}
		if p.Exit().Status.Signal() != syscall.SIGKILL {
			t.Fatalf("exit %s, want SIGKILL", p.Exit())
		}
	})
}

// waitPid waits for the first output line, a pid.
func waitPid(t *testing.T, out *lineRecorder) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if l := out.get(); len(l) > 0 {
			pid, err := strconv.Atoi(strings.TrimPrefix(l[0], "stdout 0 "))
			if err != nil {
				t.Fatalf("first line %q", l[0])
			}
			return pid
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no pid printed")
	return 0
}

// waitGone waits until pid no longer exists (the reaper has reaped it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d outlived its group's stop", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An OutputTail keeps the last lines of each origin apart and passes every
// line on.
func TestOutputTail(t *testing.T) {
	tail := NewOutputTail()
	next := &lineRecorder{}
	out := tail.Tee(next)
	for i := range 50 {
		out.Line("stdout", 1, []byte(fmt.Sprint("one ", i)))
		if i < 3 {
			out.Line("stderr", 2, []byte(fmt.Sprint("two ", i)))
		}
	}
	if got := tail.Recent(2); got != "two 0\ntwo 1\ntwo 2" {
		t.Fatalf("origin 2: %q", got)
	}
	one := strings.Split(tail.Recent(1), "\n")
	if len(one) != tailLines || one[0] != "one 10" || one[len(one)-1] != "one 49" {
		t.Fatalf("origin 1 kept %d lines from %q", len(one), one[0])
	}
	if got := tail.Recent(3); got != "" {
		t.Fatalf("origin 3: %q", got)
	}
	if n := len(next.get()); n != 53 {
		t.Fatalf("passed on %d lines", n)
	}
}
