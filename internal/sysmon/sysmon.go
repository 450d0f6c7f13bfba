// Package sysmon keeps the Go runtime's system monitor out of its deep
// sleep in the agent, which relays thousands of short requests a second.
//
// The runtime's sysmon thread sleeps on a note whenever every P is idle,
// and the first system call after that wakes it again with a futex; it
// then polls every 20 µs before it finds the process idle once more. An
// agent that idles between requests (for the program's answer, for the
// client's next request) pays that round for nearly every request: a
// futex wake on its critical path and two context switches of sysmon's
// thread, which on the 2-core VMs measured here cost a third of the
// agent's throughput (BENCHMARKS.md, "Issue 17, session 8: Go's
// sysmon"). The runtime keeps sysmon out of that sleep when GODEBUG's
// schedtrace is set (so that it can print on time); with the largest
// period, 2^31-1 ms (24.8 days), the runtime prints its scheduler line
// once per 24.8 days of the machine's uptime (so once at start on a
// machine up longer than that), and sysmon instead backs off to a 10 ms
// poll when the agent is idle.
//
// GODEBUG is read when the runtime starts, so KeepAwake sets it and
// executes the program again, in place (same PID, same arguments): the
// cost is one exec at start. An operator who sets schedtrace in GODEBUG
// (schedtrace=0 turns this off) is left alone.
package sysmon

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Setting is what KeepAwake adds to GODEBUG.
const Setting = "schedtrace=2147483647"

// KeepAwake re-executes the running program with Setting in GODEBUG unless
// GODEBUG already names schedtrace. It returns only when it did not
// re-execute: nothing to do (nil), or the exec failed (the program then
// runs on with the runtime's defaults).
func KeepAwake() error {
	env, ok := Environ(os.Environ())
	if !ok {
		return nil
	}
	self, err := selfPath()
	if err != nil {
		return fmt.Errorf("re-executing with GODEBUG=%s: %w", Setting, err)
	}
	if err := syscall.Exec(self, os.Args, env); err != nil {
		return fmt.Errorf("re-executing %s with GODEBUG=%s: %w", self, Setting, err)
	}
	return nil // not reached
}

// selfPath is the path to execute the running program again by. The kernel
// names a process after the file it executes (its comm, which ps and pgrep
// show), so not /proc/self/exe (named exe) nor os.Executable alone: that
// is the file with its links resolved, and an agent started through a
// link (host-agent -> host-agent-1.2) would change its name. The path the
// program was started by (os.Args[0], looked up in PATH when it has no
// slash) is used when it is still the running program's file; else
// os.Executable.
func selfPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	if len(os.Args) == 0 || os.Args[0] == "" {
		return exe, nil
	}
	arg0, err := exec.LookPath(os.Args[0])
	if err != nil {
		return exe, nil
	}
	a, errA := os.Stat(arg0)
	e, errE := os.Stat(exe)
	if errA != nil || errE != nil || !os.SameFile(a, e) {
		return exe, nil
	}
	return arg0, nil
}

// Environ returns environ with Setting added to GODEBUG, and whether that
// changed anything (false when GODEBUG already sets schedtrace).
func Environ(environ []string) ([]string, bool) {
	out := make([]string, 0, len(environ)+1)
	found := false
	for _, kv := range environ {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		if !ok {
			out = append(out, kv)
			continue
		}
		if found {
			continue // a duplicate: the runtime reads the first
		}
		found = true
		for _, s := range strings.Split(v, ",") {
			if name, _, _ := strings.Cut(s, "="); strings.TrimSpace(name) == "schedtrace" {
				return environ, false
			}
		}
		if v == "" {
			out = append(out, "GODEBUG="+Setting)
		} else {
			out = append(out, "GODEBUG="+v+","+Setting)
		}
	}
	if !found {
		out = append(out, "GODEBUG="+Setting)
	}
	return out, true
}
