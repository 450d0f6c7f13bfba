package service

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/setup"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// panicky is an app whose Serve panics.
type panicky struct{}

func (panicky) Serve(context.Context, *mux.Stream) { panic("boom") }
func (panicky) Stop(context.Context) error         { return nil }

// A panic while serving a stream is recovered, reported to the host as a
// LOG line from init, and the service goes on answering.
func TestPanicIsRecoveredAndReported(t *testing.T) {
	code := t.TempDir()
	svc := New(Options{
		Log: slog.New(slog.DiscardHandler), Timeline: &boot.Timeline{},
		Setup:      setup.Options{Paths: setup.Paths{Root: t.TempDir()}},
		APIAddress: "127.0.0.1:0", // the test machine's loopback
		Apps: map[string]app.Factory{contract.InterfaceASGI: func(context.Context, *contract.Config, string, app.Output) (app.App, error) {
			return panicky{}, nil
		}},
	})
	defer svc.Stop(time.Second)
	guestEnd, hostEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go svc.serveSession(ctx, guestEnd, "pipe", svc.admit(ctx))

	logs := make(chan string, 4)
	results := make(chan bool, 1)
	host := mux.Client(hostEnd, mux.Config{OnControl: func(ft frame.Type, p []byte) {
		switch ft {
		case frame.TypeLog:
			var l message.Log
			if l.Unmarshal(p) == nil && string(l.Source) == "init" {
				logs <- string(l.Line)
			}
		case frame.TypeConfigResult:
			var r message.ConfigResult
			r.Unmarshal(p)
			results <- r.OK
		}
	}})
	defer host.Close()
	mainPy := code + "/main.py"
	writeFile(t, mainPy, "app = None\n")
	doc := `{"program_id":"p","interface":"asgi","entrypoint":"main:app","code":{"encoding":"directory","path":"` + code + `"}}`
	if err := host.SendControl(frame.TypeConfig, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	if ok := <-results; !ok {
		t.Fatal("configuration failed")
	}
	if _, err := host.Open(ctx, &message.RequestHead{Path: []byte("/")}, nil, true); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-logs:
		if !strings.Contains(line, "boom") {
			t.Fatalf("log line %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the host was not told about the panic")
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if _, err := host.Ping(pctx); err != nil {
		t.Fatalf("service stopped answering: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// idle is an app that serves nothing.
type idle struct{}

func (idle) Serve(_ context.Context, st *mux.Stream) { st.Reset(frame.CodeUnavailable, "") }
func (idle) Stop(context.Context) error              { return nil }

// The configured service serves the guest API before the app starts and
// tells it where in FERRY_API_URL; a call reaches the host over the
// current session, the one of a host that reconnected too.
func TestGuestAPIFollowsTheHostSession(t *testing.T) {
	code := t.TempDir()
	writeFile(t, code+"/main.py", "app = None\n")
	envs := make(chan map[string]string, 1)
	svc := New(Options{
		Log: slog.New(slog.DiscardHandler), Timeline: &boot.Timeline{},
		Setup:      setup.Options{Paths: setup.Paths{Root: t.TempDir()}},
		APIAddress: "127.0.0.1:0",
		Apps: map[string]app.Factory{contract.InterfaceASGI: func(_ context.Context, c *contract.Config, _ string, _ app.Output) (app.App, error) {
			envs <- c.Env
			return idle{}, nil
		}},
	})
	defer svc.Stop(time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	connect := func(name string, configure bool) *mux.Session {
		guestEnd, hostEnd := net.Pipe()
		go svc.serveSession(ctx, guestEnd, "pipe", svc.admit(ctx))
		results := make(chan bool, 1)
		host := mux.Client(hostEnd, mux.Config{
			Handler: func(st *mux.Stream) {
				st.WriteResponse(&message.ResponseHead{Status: 200}, []byte(name), true)
			},
			OnControl: func(ft frame.Type, p []byte) {
				if ft == frame.TypeConfigResult {
					var r message.ConfigResult
					r.Unmarshal(p)
					results <- r.OK
				}
			},
		})
		if configure {
			doc := `{"program_id":"p","interface":"asgi","entrypoint":"main:app","code":{"encoding":"directory","path":"` + code + `"}, "env": {"FERRY_API_URL": "user value", "KEEP": "1"}}`
			if err := host.SendControl(frame.TypeConfig, []byte(doc)); err != nil {
				t.Fatal(err)
			}
			if ok := <-results; !ok {
				t.Fatal("configuration failed")
			}
		}
		return host
	}
	call := func(url string) string {
		resp, err := http.Get(url + "/v1/properties")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	first := connect("first", true)
	env := <-envs
	url := env[contract.APIURLEnv]
	if !strings.HasPrefix(url, "http://127.0.0.1:") || env["KEEP"] != "1" {
		t.Fatalf("the app's environment %v", env)
	}
	if got := call(url); got != "200 first" {
		t.Errorf("a call over the first session: %q", got)
	}
	first.Close()
	second := connect("second", false)
	defer second.Close()
	if _, err := second.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	// The service takes the new session once the host's HELLO arrived.
	got := call(url)
	for deadline := time.Now().Add(10 * time.Second); strings.HasPrefix(got, "503") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		got = call(url)
	}
	if got != "200 second" {
		t.Errorf("a call after the host reconnected: %q", got)
	}
}

// stoppedApp records its Stop.
type stoppedApp struct{ stopped chan struct{} }

func (stoppedApp) Serve(context.Context, *mux.Stream) {}
func (a stoppedApp) Stop(context.Context) error       { close(a.stopped); return nil }

// Stop while a configuration is being applied (the app still starting)
// cancels it and waits for it: what it started is stopped, and Stop
// returns only then; before, Stop found no app and returned, and the app
// started after it.
func TestStopDuringConfiguration(t *testing.T) {
	code := t.TempDir()
	writeFile(t, code+"/main.py", "app = None\n")
	starting := make(chan struct{})
	started := stoppedApp{stopped: make(chan struct{})}
	svc := New(Options{
		Log: slog.New(slog.DiscardHandler), Timeline: &boot.Timeline{},
		Setup:      setup.Options{Paths: setup.Paths{Root: t.TempDir()}},
		APIAddress: "127.0.0.1:0",
		Apps: map[string]app.Factory{contract.InterfaceASGI: func(ctx context.Context, _ *contract.Config, _ string, _ app.Output) (app.App, error) {
			close(starting)
			<-ctx.Done() // an app that starts until it is told to give up
			return started, nil
		}},
	})
	doc := `{"program_id":"p","interface":"asgi","entrypoint":"main:app","code":{"encoding":"directory","path":"` + code + `"}}`
	applied := make(chan *contract.ConfigError, 1)
	go func() { applied <- svc.ApplyDocument(context.Background(), []byte(doc)) }()
	<-starting
	stopped := make(chan error, 1)
	go func() { stopped <- svc.Stop(time.Second) }()
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("Stop did not end the configuration being applied")
	}
	select {
	case <-started.stopped:
	default:
		t.Fatal("the app the configuration started was not stopped")
	}
	<-applied
}
