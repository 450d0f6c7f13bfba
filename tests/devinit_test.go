package tests

import (
	"bytes"
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

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// debianPython is the interpreter with Debian's ASGI packages.
const debianPython = "/usr/bin/python3"

// requirePythonModules skips unless Debian's python3 can import every module.
func requirePythonModules(t *testing.T, modules ...string) {
	t.Helper()
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("%s is missing (bash .ci/run installs it)", debianPython)
	}
	script := "import " + strings.Join(modules, ", ")
	if out, err := exec.Command(debianPython, "-c", script).CombinedOutput(); err != nil {
		t.Skipf("%s cannot import %s (bash .ci/run installs the Debian packages): %s", debianPython, strings.Join(modules, ", "), out)
	}
}

// devInit is bin/init run by hand (not PID 1), talking to the test over an
// inherited socket: the app path without namespaces or root.
type devInit struct {
	cmd    *exec.Cmd
	sess   *mux.Session
	stderr *syncBuffer
	result chan message.ConfigResult

	mu   sync.Mutex
	logs []message.Log
}

func startDevInit(t *testing.T) *devInit {
	t.Helper()
	bin, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hostEnd, guestEnd := os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "guest")
	d := &devInit{stderr: &syncBuffer{}, result: make(chan message.ConfigResult, 4)}
	d.cmd = exec.Command(bin, "-transport", "fd:3", "-debug")
	d.cmd.ExtraFiles = []*os.File{guestEnd}
	d.cmd.Stdout, d.cmd.Stderr = d.stderr, d.stderr
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	exited := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the forking thread exits: keep it alive.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := d.cmd.Start()
		started <- err
		if err == nil {
			d.cmd.Wait()
			close(exited)
		}
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	guestEnd.Close()
	conn, err := net.FileConn(hostEnd)
	hostEnd.Close()
	if err != nil {
		t.Fatal(err)
	}
	d.sess = mux.Client(conn, mux.Config{OnControl: func(ft frame.Type, p []byte) {
		switch ft {
		case frame.TypeConfigResult:
			var r message.ConfigResult
			if err := r.Unmarshal(append([]byte(nil), p...)); err == nil {
				d.result <- r
			}
		case frame.TypeLog:
			var l message.Log
			if err := l.Unmarshal(append([]byte(nil), p...)); err == nil {
				d.mu.Lock()
				d.logs = append(d.logs, l)
				d.mu.Unlock()
			}
		}
	}})
	t.Cleanup(func() {
		// Init stops its program on SIGTERM; give it the grace period.
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			d.cmd.Process.Kill()
		}
		d.sess.Close()
		if t.Failed() || os.Getenv("FERRY_TEST_INIT_LOG") != "" {
			t.Logf("init output:\n%s", d.stderr.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := d.sess.Handshake(ctx); err != nil {
		t.Fatalf("handshake with init: %v\n%s", err, d.stderr.String())
	}
	return d
}

// configure sends a configuration and waits for its result.
func (d *devInit) configure(t *testing.T, cfg map[string]any) message.ConfigResult {
	t.Helper()
	doc, _ := json.Marshal(cfg)
	if err := d.sess.SendControl(frame.TypeConfig, doc); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-d.result:
		return r
	case <-time.After(3 * time.Minute):
		t.Fatalf("no configuration result\n%s", d.stderr.String())
		return message.ConfigResult{}
	}
}

// mustConfigure configures and fails the test unless it succeeded.
func (d *devInit) mustConfigure(t *testing.T, cfg map[string]any) {
	t.Helper()
	if r := d.configure(t, cfg); !r.OK {
		t.Fatalf("configuration failed: %s / %s: %s\n%s\ninit output:\n%s", r.Phase, r.Field, r.Message, r.Detail, d.stderr.String())
	}
}

// logLines returns the program output received as LOG frames.
func (d *devInit) logLines() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, l := range d.logs {
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
func writeApp(t *testing.T, files map[string]string) string {
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

var _ = bytes.Equal

func chmodX(path string) error { return os.Chmod(path, 0o755) }

// fmtSscanPid reads the pid from a sandbox VM's description.
func fmtSscanPid(describe string, pid *int) (int, error) {
	return fmt.Sscanf(describe, "sandbox pid %d", pid)
}
