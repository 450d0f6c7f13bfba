package backend

import (
	"bytes"
	"fmt"
	"log/slog"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
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

// LineWriter splits a child's console output into lines (without the
// newline or a trailing carriage return) and gives each to Line. A line
// longer than 64 KiB is passed on in pieces.
type LineWriter struct {
	Line func(string)

	mu  sync.Mutex
	buf []byte
}

// Write implements io.Writer.
func (w *LineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.Line(strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 {
		w.Line(string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// Flush passes on a last line that has no newline.
func (w *LineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.Line(strings.TrimRight(string(w.buf), "\r"))
		w.buf = w.buf[:0]
	}
}

// consoleTail is how many console lines a Console keeps.
const consoleTail = 25

// Console receives a VM's console output: each line goes to Log (at debug
// level) and to Forward (the program's logs), and the last lines are kept
// to explain a VM that ends early (Explain).
type Console struct {
	Log     *slog.Logger
	Forward func(line string)

	once  sync.Once
	lines LineWriter
	mu    sync.Mutex
	tail  []string
}

// Write implements io.Writer.
func (c *Console) Write(p []byte) (int, error) {
	c.once.Do(func() { c.lines.Line = c.line })
	return c.lines.Write(p)
}

// Flush passes on a last line that has no newline.
func (c *Console) Flush() {
	c.once.Do(func() { c.lines.Line = c.line })
	c.lines.Flush()
}

func (c *Console) line(line string) {
	c.mu.Lock()
	c.tail = append(c.tail, line)
	if len(c.tail) > consoleTail {
		c.tail = c.tail[len(c.tail)-consoleTail:]
	}
	c.mu.Unlock()
	if c.Log != nil {
		c.Log.Debug("console", "line", line)
	}
	if c.Forward != nil {
		c.Forward(line)
	}
}

// Tail returns the last console lines.
func (c *Console) Tail() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.tail...)
}

// Explain adds the last console lines to err, which says how the VM
// ended.
func (c *Console) Explain(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil || len(c.tail) == 0 {
		return err
	}
	return fmt.Errorf("%w; last console lines:\n  %s", err, strings.Join(c.tail, "\n  "))
}
