package service

import (
	"context"
	"log/slog"
	"net"
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
		Setup: setup.Options{Paths: setup.Paths{Root: t.TempDir()}},
		Apps: map[string]app.Factory{contract.InterfaceASGI: func(context.Context, *contract.Config, string, app.Output) (app.App, error) {
			return panicky{}, nil
		}},
	})
	guestEnd, hostEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go svc.serveSession(ctx, guestEnd)

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
