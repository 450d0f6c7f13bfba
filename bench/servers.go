package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Design is one of the ways of serving the app that are compared.
type Design struct {
	Key  string // A, A′, B or C
	Name string
	// start runs the design on app with procs Python processes.
	start func(ctx context.Context, cfg *Config, app App, procs int) (*server, error)
	// websockets: whether the design carries websockets at all.
	websockets bool
}

// App is an ASGI app of bench/apps.
type App struct {
	Module string // plain or fastapi_app
	Ready  string // a path that answers 200 once the app is up
}

var (
	plainApp   = App{Module: "plain", Ready: "/"}
	fastapiApp = App{Module: "fastapi_app", Ready: "/items/1"}
)

// Designs returns A, A′, B, N and C, and E with prototype.
func Designs(prototype bool) []Design {
	designs := []Design{
		{Key: "A", Name: "uvicorn (httptools, uvloop)", start: startUvicorn, websockets: true},
		{Key: "A′", Name: "nginx (one worker) in front of uvicorn, keep-alive over a unix socket", start: startNginx, websockets: true},
		{Key: "B", Name: "Ferry (host-agent and its event-loop front, sandbox, init, worker pool)", start: startFerry, websockets: true},
		{Key: "N", Name: "Ferry with the net/http front alone (host-agent --front net/http)", start: startFerryNetHTTP, websockets: true},
		{Key: "C", Name: "per-request msgpack (Aleph-style)", start: startMsgpack},
	}
	if prototype {
		designs = append(designs, Design{Key: "E", Name: "prototype, not Ferry: a hand-written epoll loop (bench/epollfront) relaying to Ferry's ASGI workers over their data channels, no init", start: startEpollFront})
	}
	return designs
}

// server is a running design.
type server struct {
	base     string   // http://127.0.0.1:PORT
	children []*child // the processes started; their trees are measured
	pids     []int
}

// child is a started process and a channel closed when it has exited.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (s *server) stop() {
	for i := len(s.children) - 1; i >= 0; i-- {
		c := s.children[i]
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
		}
		// Whatever is left in the group (uvicorn's workers, forked guests).
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

// freePort returns a loopback TCP port nobody listens on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// launch starts a command in its own process group with its output in
// logName under the work directory.
func launch(cfg *Config, logName string, dir string, name string, args ...string) (*child, error) {
	return launchEnv(cfg, nil, logName, dir, name, args...)
}

// launchEnv is launch with env added to the harness's environment.
func launchEnv(cfg *Config, env []string, logName string, dir string, name string, args ...string) (*child, error) {
	log, err := os.Create(filepath.Join(cfg.WorkDir, logName))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); log.Close(); close(c.done) }()
	return c, nil
}

// waitReady polls url until it answers 200.
func waitReady(ctx context.Context, url string, children []*child, logs string) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		for _, c := range children {
			select {
			case <-c.done:
				return fmt.Errorf("%s exited (%v) before it was ready; see %s", c.cmd.Path, c.cmd.ProcessState, logs)
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer 200 in time (%v); see %s", url, err, logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func startUvicorn(ctx context.Context, cfg *Config, app App, procs int) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logName := fmt.Sprintf("A-%s-%d.log", app.Module, procs)
	cmd, err := launch(cfg, logName, cfg.AppsDir, cfg.Python, uvicornArgs(app, loopbackListen(port), procs)...)
	if err != nil {
		return nil, err
	}
	return ready(ctx, cfg, port, app, logName, cmd)
}

// uvicornArgs is design A's command line after the interpreter (A′'s too,
// listening on a unix socket instead); listen is where it listens
// (loopbackListen, or --uds PATH).
func uvicornArgs(app App, listen []string, procs int) []string {
	args := []string{"-m", "uvicorn", "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"}
	args = append(args, listen...)
	return append(args, "--workers", strconv.Itoa(procs), app.Module+":app")
}

func startFerry(ctx context.Context, cfg *Config, app App, procs int) (*server, error) {
	return startAgent(ctx, cfg, app, procs, "B", "loop")
}

func startFerryNetHTTP(ctx context.Context, cfg *Config, app App, procs int) (*server, error) {
	return startAgent(ctx, cfg, app, procs, "N", "net/http")
}

// startAgent runs host-agent run with the HTTP front named (--front).
func startAgent(ctx context.Context, cfg *Config, app App, procs int, key, front string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logName := fmt.Sprintf("%s-%s-%d.log", key, app.Module, procs)
	cmd, err := launchEnv(cfg, frontEnv(cfg), logName, cfg.AppsDir, cfg.HostAgent, "run", "--listen", "127.0.0.1:"+strconv.Itoa(port),
		"--front", front, "--workers", strconv.Itoa(procs), "--python", cfg.Python, "--init", cfg.Init, cfg.AppsDir, app.Module+":app")
	if err != nil {
		return nil, err
	}
	return ready(ctx, cfg, port, app, logName, cmd)
}

// frontEnv is the environment of the Go front ends: GOMAXPROCS from
// Config.FrontProcs (the agent gives init none of its environment, so
// only the front itself is bound).
func frontEnv(cfg *Config) []string {
	if cfg.FrontProcs <= 0 {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(cfg.FrontProcs)}
}

func startEpollFront(ctx context.Context, cfg *Config, app App, procs int) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logName := fmt.Sprintf("E-%s-%d.log", app.Module, procs)
	cmd, err := launchEnv(cfg, frontEnv(cfg), logName, cfg.AppsDir, cfg.Self, "epoll-front", "--listen", "127.0.0.1:"+strconv.Itoa(port),
		"--workers", strconv.Itoa(procs), "--python", cfg.Python, "--app", app.Module+":app")
	if err != nil {
		return nil, err
	}
	return ready(ctx, cfg, port, app, logName, cmd)
}

func startMsgpack(ctx context.Context, cfg *Config, app App, procs int) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(cfg.WorkDir, fmt.Sprintf("guest-%s-%d.sock", app.Module, procs))
	os.Remove(sock)
	logName := fmt.Sprintf("C-%s-%d.log", app.Module, procs)
	guest, err := launch(cfg, logName, cfg.AppsDir, cfg.Python, filepath.Join(cfg.AppsDir, "msgpack_guest.py"),
		"--socket", sock, "--app", app.Module+":app", "--processes", strconv.Itoa(procs))
	if err != nil {
		return nil, err
	}
	front, err := launchEnv(cfg, frontEnv(cfg), "C-front-"+logName, cfg.WorkDir, cfg.Self, "msgpack-front",
		"--listen", "127.0.0.1:"+strconv.Itoa(port), "--socket", sock)
	if err != nil {
		syscall.Kill(-guest.cmd.Process.Pid, syscall.SIGKILL)
		return nil, err
	}
	return ready(ctx, cfg, port, app, logName, guest, front)
}

func ready(ctx context.Context, cfg *Config, port int, app App, logName string, children ...*child) (*server, error) {
	s := &server{base: "http://127.0.0.1:" + strconv.Itoa(port), children: children}
	for _, c := range children {
		s.pids = append(s.pids, c.cmd.Process.Pid)
	}
	if err := waitReady(ctx, s.base+app.Ready, children, filepath.Join(cfg.WorkDir, logName)); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}
