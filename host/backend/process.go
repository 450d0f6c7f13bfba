package backend

import (
	"fmt"
	"log/slog"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/ferry-vm/ferry/internal/lines"
	"github.com/ferry-vm/ferry/internal/logring"
)

// StartPinned starts cmd so that it is killed (SIGKILL) when the agent
// dies, and calls exited with Wait's result once it has ended. Pdeathsig
// fires when the OS thread that forked the child exits, and Go retires
// threads: the forking goroutine keeps its thread locked until the child
// has ended.
func StartPinned(cmd *exec.Cmd, exited func(error)) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited(cmd.Wait())
	}()
	return <-started
}

// Console bounds: how many lines a Console keeps, and the longest line
// it passes on whole (a longer one goes in pieces; the bound only limits
// the memory a VM printing without newlines can take).
const (
	consoleTail     = 25
	consoleLineSize = 64 << 10
)

// Console receives a VM's console output: each line goes to Log (at debug
// level) and to Forward (the program's logs), and the last lines are kept
// to explain a VM that ends early (Explain).
type Console struct {
	Log     *slog.Logger
	Forward func(line string)

	once  sync.Once
	lines *lines.Writer
	tail  *logring.Ring
}

// init makes the line splitter and the tail on first use, so that a
// Console is ready as a literal.
func (c *Console) init() {
	c.once.Do(func() {
		c.lines = lines.NewWriter(lines.Options{Max: consoleLineSize, TrimCR: true}, c.line)
		c.tail = logring.NewRing(consoleTail, consoleTail*consoleLineSize)
	})
}

// Write implements io.Writer.
func (c *Console) Write(p []byte) (int, error) {
	c.init()
	return c.lines.Write(p)
}

// Flush passes on a last line that has no newline.
func (c *Console) Flush() {
	c.init()
	c.lines.Flush()
}

func (c *Console) line(b []byte) {
	c.tail.Add("console", 0, 0, b)
	line := string(b)
	if c.Log != nil {
		c.Log.Debug("console", "line", line)
	}
	if c.Forward != nil {
		c.Forward(line)
	}
}

// Tail returns the last console lines.
func (c *Console) Tail() []string {
	c.init()
	var tail []string
	for _, e := range c.tail.Since(0) {
		tail = append(tail, string(e.Line))
	}
	return tail
}

// Explain adds the last console lines to err, which says how the VM
// ended.
func (c *Console) Explain(err error) error {
	if err == nil {
		return err
	}
	tail := c.Tail()
	if len(tail) == 0 {
		return err
	}
	return fmt.Errorf("%w; last console lines:\n  %s", err, strings.Join(tail, "\n  "))
}
