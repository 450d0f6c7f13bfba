package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/internal/syncbuf"
	"github.com/ferry-vm/ferry/protocol/message"
)

// output is a writer tests can read while the agent writes to it.
type output struct{ syncbuf.Buffer }

// line waits for a line starting with prefix and returns it.
func (o *output) line(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range strings.Split(o.String(), "\n") {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no line %q in:\n%s", prefix, o.String())
	return ""
}

// flagConfig parses a command line of run or serve into its Config.
func flagConfig(t *testing.T, register func(*flag.FlagSet) *Flags, args ...string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f.Config(fs.Args())
}

// agentRun is an agent a test started with Serve.
type agentRun struct {
	stdout, stderr *output
	stop           context.CancelFunc
	done           chan error
	once           sync.Once
	err            error
}

// start runs Serve on cfg with the fake backend be until the test ends.
func start(t *testing.T, cfg *Config, be *backendtest.Backend) *agentRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &agentRun{stdout: &output{}, stderr: &output{}, stop: cancel, done: make(chan error, 1)}
	cfg.Backend, cfg.Stdout, cfg.Stderr = be, a.stdout, a.stderr
	go func() { a.done <- Serve(ctx, cfg) }()
	t.Cleanup(func() {
		if err := a.wait(t); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return a
}

// serving starts the agent and waits for its "ferry: serving" line,
// which must start with want and end with the URL it serves and suffix;
// it returns the agent and that URL without the suffix.
func serving(t *testing.T, cfg *Config, be *backendtest.Backend, want, suffix string) (*agentRun, string) {
	t.Helper()
	a := start(t, cfg, be)
	line := a.stdout.line(t, "ferry: serving ")
	fields := strings.Fields(line)
	url, ok := strings.CutSuffix(fields[len(fields)-1], suffix)
	if !strings.HasPrefix(line, want) || !ok {
		t.Fatalf("serving line %q", line)
	}
	return a, url
}

// wait stops the agent and returns what Serve returned.
func (a *agentRun) wait(t *testing.T) error {
	a.once.Do(func() {
		a.stop()
		select {
		case a.err = <-a.done:
		case <-time.After(20 * time.Second):
			t.Fatal("Serve did not return after its context ended")
		}
	})
	return a.err
}

// get fetches url and decodes the fake program's echo.
func get(t *testing.T, url string, host ...string) (int, backendtest.Seen) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(host) > 0 {
		req.Host = host[0]
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var seen backendtest.Seen
	if resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(&seen); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, seen
}

// run's command line is a one-program manifest: the program gets every
// request at / (root_path empty, /vm/... and /healthz included) through
// the same router as serve's, with its flags in the VM's configuration
// and its time limit; the agent prints where it serves and the boot, and
// stops the VM when its context ends.
func TestRunServesOneProgramAtTheRoot(t *testing.T) {
	code := t.TempDir()
	cfg, err := flagConfig(t, RunFlags, "--listen", "127.0.0.1:0", "--workers", "2", "--vcpus", "3", "--memory", "300",
		"--python", "/opt/python3", "--timeout", "300ms", "--network", code, "main:app")
	if err != nil {
		t.Fatal(err)
	}
	be := &backendtest.Backend{Handler: backendtest.Echo}
	a, url := serving(t, cfg, be, "ferry: serving main:app (asgi, fake backend) on http://127.0.0.1:", "/")
	if cold := a.stdout.line(t, "ferry: cold start "); !strings.Contains(cold, message.FormatTimeline(backendtest.Timeline)) {
		t.Fatalf("cold start line %q", cold)
	}

	for path, want := range map[string]backendtest.Seen{
		"/a%20b?x=1": {Method: "GET", Path: "/a b", RawPath: "/a%20b", Query: "x=1"},
		"/vm/main/":  {Method: "GET", Path: "/vm/main/", RawPath: "/vm/main/"},
		"/healthz":   {Method: "GET", Path: "/healthz", RawPath: "/healthz"},
	} {
		status, seen := get(t, url+path)
		seen.Host = ""
		if status != 200 || seen != want {
			t.Errorf("%s: %d %+v, want %+v", path, status, seen, want)
		}
	}
	if status, _ := get(t, url+"/sleep"); status != http.StatusGatewayTimeout {
		t.Errorf("past --timeout: %d, want 504", status)
	}

	vms := be.VMs()
	if len(vms) != 1 {
		t.Fatalf("%d VMs, want the one booted before serving", len(vms))
	}
	vm := vms[0]
	var sent struct {
		ProgramID  string `json:"program_id"`
		Interface  string `json:"interface"`
		Entrypoint string `json:"entrypoint"`
		Python     string `json:"python"`
		Workers    int    `json:"workers"`
	}
	if err := json.Unmarshal(vm.Config(), &sent); err != nil {
		t.Fatal(err)
	}
	if vm.Spec.CodePath != code || !vm.Spec.Network || vm.Spec.VCPUs != 3 || vm.Spec.MemoryMiB != 300 ||
		sent.ProgramID != "main" || sent.Interface != "asgi" || sent.Entrypoint != "main:app" || sent.Python != "/opt/python3" || sent.Workers != 2 {
		t.Fatalf("spec %+v, configuration %s", vm.Spec, vm.Config())
	}
	if err := a.wait(t); err != nil {
		t.Fatal(err)
	}
	if !vm.Ended() || !vm.GoneAway() {
		t.Fatal("the VM was not stopped when the agent stopped")
	}
}

// run's program that fails to start ends the agent with an error (not a
// configuration error) after printing init's detail.
func TestRunProgramThatFailsToStart(t *testing.T) {
	cfg, err := flagConfig(t, RunFlags, "--listen", "127.0.0.1:0", t.TempDir(), "main:app")
	if err != nil {
		t.Fatal(err)
	}
	be := &backendtest.Backend{Refuse: &message.ConfigResult{Phase: []byte("app"), Field: []byte("entrypoint"),
		Message: []byte("no module named main"), Detail: []byte("Traceback: ModuleNotFoundError")}}
	out, errOut := &output{}, &output{}
	cfg.Backend, cfg.Stdout, cfg.Stderr = be, out, errOut
	err = Serve(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "the program did not start") || errors.As(err, new(*ConfigError)) {
		t.Fatalf("Serve: %v", err)
	}
	errOut.line(t, "Traceback: ModuleNotFoundError")
	if strings.Contains(out.String(), "ferry: serving") {
		t.Fatal("serving announced for a program that did not start")
	}
}

// serve routes its configuration's programs at /vm/{id} and by host name,
// through the same router, with the admin API on its socket.
func TestServeRoutesTheConfigurationsPrograms(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "agent.json")
	doc := `{"idle_timeout": "5m", "programs": {
		"hello": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": "hello"}, "on": {"http": true}},
		"other": {"code": {"entrypoint": "server", "interface": "executable", "path": "/srv/other"}, "resources": {"seconds": 0.3}, "on": {"http": true}}}}`
	if err := os.WriteFile(config, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "admin.sock")
	cfg, err := flagConfig(t, ServeFlags, "--config", config, "--listen", "127.0.0.1:0", "--admin", sock, "--state-dir", filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	be := &backendtest.Backend{Handler: backendtest.Echo}
	_, url := serving(t, cfg, be, "ferry: serving 2 programs (fake backend) on http://127.0.0.1:", "/vm/{program}/")

	if status, seen := get(t, url+"/vm/hello/x?y=1"); status != 200 || seen.RootPath != "/vm/hello" || seen.Path != "/x" || seen.Query != "y=1" {
		t.Errorf("/vm/hello/x: %d %+v", status, seen)
	}
	if status, seen := get(t, url+"/by/host", "other.example.org"); status != 200 || seen.RootPath != "" || seen.Path != "/by/host" {
		t.Errorf("host routing: %d %+v", status, seen)
	}
	if status, _ := get(t, url+"/vm/other/sleep"); status != http.StatusGatewayTimeout {
		t.Errorf("past resources.seconds: %d, want 504", status)
	}
	if status, _ := get(t, url+"/vm/nope/"); status != http.StatusNotFound {
		t.Errorf("unknown program: %d", status)
	}
	var list []admin.Status
	if err := admin.NewClient(sock, "").Do("GET", "/v1/programs", nil, &list); err != nil || len(list) != 2 || !list[0].Running {
		t.Fatalf("admin list: %+v %v", list, err)
	}
	if got := be.VMs()[0].Spec.CodePath; got != filepath.Join(dir, "hello") {
		t.Errorf("relative code path resolved to %s", got)
	}
}

// Command lines and configurations the agent refuses: ErrUsage for the
// wrong arguments, a ConfigError naming what is wrong otherwise.
func TestConfigErrors(t *testing.T) {
	code := t.TempDir()
	file := filepath.Join(code, "file")
	os.WriteFile(file, nil, 0o644)
	bad := filepath.Join(code, "bad.json")
	os.WriteFile(bad, []byte(`{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "wsgi", "path": "x"}, "on": {"http": true}}}}`), 0o644)
	for _, tc := range []struct {
		name     string
		register func(*flag.FlagSet) *Flags
		args     []string
		want     string // part of the ConfigError; empty: ErrUsage
	}{
		{"run without an entrypoint", RunFlags, []string{code}, ""},
		{"serve without --config", ServeFlags, nil, ""},
		{"serve with arguments", ServeFlags, []string{"--config", bad, "extra"}, ""},
		{"run on a file", RunFlags, []string{file, "main:app"}, "is not a directory"},
		{"run with a bad interface", RunFlags, []string{"--interface", "wsgi", code, "main:app"}, "programs.main.code.interface"},
		{"run with negative workers", RunFlags, []string{"--workers", "-1", code, "main:app"}, "programs.main.resources"},
		{"run with a bad limit", RunFlags, []string{"--max-concurrent", "0", code, "main:app"}, "--max-concurrent"},
		{"run with an unknown log format", RunFlags, []string{"--log-format", "xml", code, "main:app"}, "--log-format"},
		{"serve with a bad manifest", ServeFlags, []string{"--config", bad}, "programs.a.code.interface"},
	} {
		_, err := flagConfig(t, tc.register, tc.args...)
		var cerr *ConfigError
		switch {
		case tc.want == "" && !errors.Is(err, ErrUsage):
			t.Errorf("%s: %v, want ErrUsage", tc.name, err)
		case tc.want != "" && (!errors.As(err, &cerr) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want a ConfigError with %q", tc.name, err, tc.want)
		}
	}

	cfg, err := flagConfig(t, RunFlags, "--backend", "nope", code, "main:app")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Stdout, cfg.Stderr = io.Discard, io.Discard
	if err := Serve(context.Background(), cfg); !errors.As(err, new(*ConfigError)) || !strings.Contains(err.Error(), `unknown backend "nope"`) {
		t.Fatalf("unknown backend: %v", err)
	}
}

// run's echo of program output and the JSON log show what a terminal
// would act on (an OSC 52 clipboard write, a C1 CSI, a right-to-left
// override) as escapes; the JSON log keeps the line's value.
func TestProgramOutputIsEchoedEscaped(t *testing.T) {
	const hostile = "evil \x1b]52;c;aGk=\x07 \u009b2J invoice_\u202egnp.exe"
	line := string(echoLine("app", message.Log{Source: []byte("stdout\x1b[2J"), Line: []byte(hostile)}))
	if want := `[app stdout\x1b[2J 0] evil \x1b]52;c;aGk=\x07 \u009b2J invoice_\u202egnp.exe` + "\n"; line != want {
		t.Fatalf("echoed %q, want %q", line, want)
	}

	var out syncbuf.Buffer
	log, _ := newLogger(&Config{LogJSON: true}, &out)
	log.Info("program output", "line", hostile)
	if strings.ContainsAny(out.String(), "\x1b\x07\u009b\u202e") {
		t.Fatalf("the JSON log printed controls raw: %q", out.String())
	}
	var rec struct{ Line string }
	if err := json.Unmarshal([]byte(out.String()), &rec); err != nil || rec.Line != hostile {
		t.Fatalf("the JSON log's line is %q (%v), want the program's", rec.Line, err)
	}
}
