package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// debianPython is the interpreter with Debian's ASGI packages.
const debianPython = "/usr/bin/python3"

// requirePythonModules skips unless Debian's python3 can import every module.
func requirePythonModules(t testing.TB, modules ...string) {
	t.Helper()
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("%s is missing (bash .ci/run installs it)", debianPython)
	}
	script := "import " + strings.Join(modules, ", ")
	if out, err := exec.Command(debianPython, "-c", script).CombinedOutput(); err != nil {
		t.Skipf("%s cannot import %s (bash .ci/run installs the Debian packages): %s", debianPython, strings.Join(modules, ", "), out)
	}
}

// guest is bin/init started for a test, talking to it over an inherited
// socket: by default as PID 1 of new PID, mount, UTS, IPC and network
// namespaces; with guestOptions.dev by hand (not PID 1), the app path
// without namespaces or root. It collects CONFIG_RESULT and LOG frames.
type guest struct {
	opt     guestOptions
	cmd     *exec.Cmd
	sess    *mux.Session
	stderr  *syncbuf.Buffer
	result  chan message.ConfigResult
	done    chan struct{} // closed when init has exited
	waitErr error         // how it exited, once done is closed

	mu   sync.Mutex
	logs []message.Log
}

// guestOptions vary how init is started.
type guestOptions struct {
	bin     string // path of the init binary (inside root when root is set)
	root    string // chroot directory; empty: the machine's root
	cmdline string // extra kernel command-line parameters
	dev     bool   // by hand: no namespaces, stopped with SIGTERM at the end
}

// startDevInit starts init by hand.
func startDevInit(t *testing.T) *guest {
	t.Helper()
	bin, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	return startGuestWith(t, guestOptions{bin: bin, dev: true})
}

func startGuestWith(t *testing.T, o guestOptions) *guest {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hostEnd, guestEnd := os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "guest")
	g := &guest{opt: o, stderr: &syncbuf.Buffer{}, result: make(chan message.ConfigResult, 4), done: make(chan struct{})}
	if o.dev {
		g.cmd = exec.Command(o.bin, "-transport", "fd:3", "-debug")
		g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	} else {
		g.cmd = exec.Command(o.bin, "-cmdline", "ferry.transport=fd:3 ferry.grace=2s ferry.debug=1 "+o.cmdline)
		g.cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET,
			Pdeathsig:  syscall.SIGKILL,
			Chroot:     o.root,
		}
		if o.root != "" {
			g.cmd.Dir = "/"
		}
	}
	g.cmd.ExtraFiles = []*os.File{guestEnd}
	g.cmd.Stdout, g.cmd.Stderr = g.stderr, g.stderr
	if err := startLocked(g.cmd, func(err error) { g.waitErr = err; close(g.done) }); err != nil {
		t.Fatal(err)
	}
	guestEnd.Close()
	conn, err := net.FileConn(hostEnd)
	hostEnd.Close()
	if err != nil {
		t.Fatal(err)
	}
	g.sess = mux.Client(conn, mux.Config{OnControl: func(ft frame.Type, p []byte) {
		switch ft {
		case frame.TypeConfigResult:
			var r message.ConfigResult
			if err := r.Unmarshal(append([]byte(nil), p...)); err == nil {
				g.result <- r
			}
		case frame.TypeLog:
			var l message.Log
			if err := l.Unmarshal(append([]byte(nil), p...)); err == nil {
				g.mu.Lock()
				g.logs = append(g.logs, l)
				g.mu.Unlock()
			}
		}
	}})
	t.Cleanup(func() {
		if o.dev {
			// Init stops its program on SIGTERM; give it the grace period.
			g.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-g.done:
			case <-time.After(15 * time.Second):
				g.cmd.Process.Kill()
			}
		} else {
			g.cmd.Process.Kill()
		}
		g.sess.Close()
		if t.Failed() || os.Getenv("FERRY_TEST_INIT_LOG") != "" {
			t.Logf("init output:\n%s", g.stderr.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := g.sess.Handshake(ctx); err != nil {
		t.Fatalf("handshake with init: %v\n%s", err, g.stderr.String())
	}
	return g
}

// startLocked starts cmd and calls exited with Wait's result when it
// ends. Pdeathsig fires when the thread that forked the process exits,
// and the namespace helpers discard the threads they lock: so cmd is
// started from a thread held locked until it exits.
func startLocked(cmd *exec.Cmd, exited func(error)) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			exited(cmd.Wait())
		}
	}()
	return <-started
}

// killedBy reports whether a process that ended with err (exec.Cmd's
// Wait) was killed by sig: how init as PID 1 of a PID namespace ends
// when it powers off (SIGINT) or reboots (SIGHUP).
func killedBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == sig
}

// configure sends a configuration and waits for its result: 30 s for init
// alone, 3 minutes when it starts a program (by hand).
func (g *guest) configure(t *testing.T, cfg map[string]any) message.ConfigResult {
	t.Helper()
	doc, _ := json.Marshal(cfg)
	if err := g.sess.SendControl(frame.TypeConfig, doc); err != nil {
		t.Fatal(err)
	}
	patience := 30 * time.Second
	if g.opt.dev {
		patience = 3 * time.Minute
	}
	select {
	case r := <-g.result:
		return r
	case <-time.After(patience):
		t.Fatalf("no configuration result\n%s", g.stderr.String())
		return message.ConfigResult{}
	}
}

// mustConfigure configures and fails the test unless it succeeded.
func (g *guest) mustConfigure(t *testing.T, cfg map[string]any) {
	t.Helper()
	if r := g.configure(t, cfg); !r.OK {
		t.Fatalf("configuration failed: %s / %s: %s\n%s\ninit output:\n%s", r.Phase, r.Field, r.Message, r.Detail, g.stderr.String())
	}
}

// logLines returns the program output received as LOG frames.
func (g *guest) logLines() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, l := range g.logs {
		out = append(out, fmt.Sprintf("%s[%d] %s", l.Source, l.Origin, l.Line))
	}
	return out
}

// asgiConfig is a configuration for an ASGI app in dir.
func asgiConfig(dir, entrypoint string, workers int) map[string]any {
	return map[string]any{
		"program_id": "test", "interface": "asgi", "entrypoint": entrypoint, "workers": workers,
		"code": map[string]any{"encoding": "directory", "path": dir},
	}
}

// writeApp writes files into a new code directory.
func writeApp(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// response is a whole HTTP response read from a stream.
type response struct {
	status  uint32
	headers map[string]string
	body    []byte
}

// request sends one HTTP request as a stream and reads the whole response.
func request(ctx context.Context, sess *mux.Session, method, path string, headers map[string]string, body []byte) (*response, error) {
	head := &message.RequestHead{HTTPVersion: []byte("1.1"), Method: []byte(method), Scheme: []byte("http"),
		Path: []byte(path), RawPath: []byte(path), ClientHost: []byte("127.0.0.1"), ClientPort: 40000,
		ServerHost: []byte("127.0.0.1"), ServerPort: 8080}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		head.Path, head.RawPath, head.QueryString = []byte(path[:i]), []byte(path[:i]), []byte(path[i+1:])
	}
	head.Headers = append(head.Headers, message.HeaderField{Name: []byte("host"), Value: []byte("test.example")})
	for k, v := range headers {
		head.Headers = append(head.Headers, message.HeaderField{Name: []byte(k), Value: []byte(v)})
	}
	st, err := sess.Open(ctx, head, body, true)
	if err != nil {
		return nil, err
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		return nil, err
	}
	r := &response{status: rh.Status, headers: map[string]string{}}
	for _, h := range rh.Headers {
		r.headers[string(h.Name)] = string(h.Value)
	}
	r.body, err = io.ReadAll(st)
	return r, err
}

// streamError returns the reset code of err, or -1.
func streamErrorCode(err error) int {
	var serr *mux.StreamError
	if errors.As(err, &serr) {
		return int(serr.Code)
	}
	return -1
}

func jsonBody(t *testing.T, r *response) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response %d is not JSON: %v\n%s", r.status, err, r.body)
	}
	return m
}

func chmodX(path string) error { return os.Chmod(path, 0o755) }

// fmtSscanPid reads the pid from a sandbox VM's description.
func fmtSscanPid(describe string, pid *int) (int, error) {
	return fmt.Sscanf(describe, "sandbox pid %d", pid)
}
