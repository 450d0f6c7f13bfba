package backend

import (
	"errors"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The console's lines (CRLF or LF, split across writes, the last one
// without a newline) are forwarded one by one; a line longer than 64 KiB
// goes in 64 KiB pieces; the last 25 explain how the VM ended.
func TestConsoleSplitsLinesAndKeepsATail(t *testing.T) {
	var lines []string
	c := &Console{Forward: func(l string) { lines = append(lines, l) }}
	c.Write([]byte("boot\r\nhal"))
	c.Write([]byte("f a line\nlast"))
	c.Write([]byte(strings.Repeat("x", 70<<10)))
	c.Flush()
	c.Flush()
	if len(lines) != 4 || !reflect.DeepEqual(lines[:2], []string{"boot", "half a line"}) || len(lines[2]) != 64<<10 || len(lines[3]) != 4+70<<10-64<<10 {
		t.Fatalf("lines %d: %q", len(lines), lines[:2])
	}
	for i := range 30 {
		fmt.Fprintf(c, "line %d\n", i)
	}
	tail := c.Tail()
	if len(tail) != 25 || tail[0] != "line 5" || tail[24] != "line 29" {
		t.Fatalf("tail %q", tail)
	}
	err := c.Explain(errors.New("exit status 1"))
	if !strings.HasPrefix(err.Error(), "exit status 1; last console lines:\n  line 5\n") || !strings.HasSuffix(err.Error(), "\n  line 29") {
		t.Fatalf("explained: %v", err)
	}
	if c.Explain(nil) != nil {
		t.Fatal("explained a VM that ended well")
	}
	if err := (&Console{}).Explain(errors.New("x")); err.Error() != "x" {
		t.Fatalf("empty console explained %q", err)
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
