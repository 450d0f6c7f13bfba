package backend

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLineWriterSplitsLines(t *testing.T) {
	var lines []string
	w := &LineWriter{Line: func(l string) { lines = append(lines, l) }}
	w.Write([]byte("boot\r\nhal"))
	w.Write([]byte("f a line\nlast"))
	w.Write([]byte(strings.Repeat("x", 70<<10)))
	w.Flush()
	w.Flush()
	if len(lines) != 3 || !reflect.DeepEqual(lines[:2], []string{"boot", "half a line"}) || len(lines[2]) != 4+70<<10 {
		t.Fatalf("lines %d: %q", len(lines), lines[:2])
	}
}

func TestStartPinnedReportsTheExit(t *testing.T) {
	exited := make(chan error, 1)
	cmd := exec.Command("sh", "-c", "exit 3")
	if err := StartPinned(cmd, func(err error) { exited <- err }); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exited was not called")
	}
	if err := StartPinned(exec.Command("/nonexistent"), func(error) { t.Error("exited called for a child that never started") }); err == nil {
		t.Fatal("no error for a missing program")
	}
}
