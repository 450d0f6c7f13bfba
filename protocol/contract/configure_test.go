package contract

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// peer is the configured side of a test: a server session that records
// the CONFIG documents it gets and answers each with answer (nothing when
// answer returns nil).
type peer struct {
	sess *mux.Session
	mu   sync.Mutex
	docs []string
}

func newPeer(t *testing.T, conn net.Conn, answer func(doc []byte) *message.ConfigResult) *peer {
	p := &peer{}
	p.sess = mux.Server(conn, mux.Config{OnControl: func(ft frame.Type, payload []byte) {
		if ft != frame.TypeConfig {
			return
		}
		p.mu.Lock()
		p.docs = append(p.docs, string(payload))
		p.mu.Unlock()
		if r := answer(payload); r != nil {
			go func() {
				_ = p.sess.SendControlMessage(frame.TypeLog, &message.Log{Source: []byte("test"), Line: []byte("configuring")})
				_ = p.sess.SendControlMessage(frame.TypeConfigResult, r)
			}()
		}
	}})
	t.Cleanup(func() { p.sess.Close() })
	return p
}

func (p *peer) received() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.docs...)
}

var goodConfig = &Config{ProgramID: "hello", Interface: InterfaceASGI, Entrypoint: "main:app",
	Code: Code{Encoding: EncodingDirectory, Source: Source{Path: "/opt/code"}}}

func TestConfigureSucceeds(t *testing.T) {
	host, guest := net.Pipe()
	timeline := []message.TimelineEntry{{Phase: []byte("app"), BootNano: 42}}
	p := newPeer(t, guest, func([]byte) *message.ConfigResult { return &message.ConfigResult{OK: true, Timeline: timeline} })
	logs := make(chan string, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, got, err := Configure(ctx, host, mux.Config{OnControl: func(ft frame.Type, payload []byte) {
		if ft == frame.TypeLog {
			var l message.Log
			if l.Unmarshal(payload) == nil {
				logs <- string(l.Line)
			}
		}
	}}, goodConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if len(got) != 1 || string(got[0].Phase) != "app" || got[0].BootNano != 42 {
		t.Fatalf("timeline %+v", got)
	}
	if docs := p.received(); len(docs) != 1 || !strings.Contains(docs[0], `"program_id":"hello"`) || !strings.Contains(docs[0], `"encoding":"directory"`) {
		t.Fatalf("peer received %q", docs)
	}
	if l := <-logs; l != "configuring" {
		t.Fatalf("LOG frame reached OnControl as %q", l)
	}
	if sess.Err() != nil {
		t.Fatalf("session closed: %v", sess.Err())
	}
}

// A refusal is a *ConfigError with everything the result said, and the
// session is closed.
func TestConfigureRefusalIsAConfigError(t *testing.T) {
	host, guest := net.Pipe()
	newPeer(t, guest, func([]byte) *message.ConfigResult {
		return &message.ConfigResult{Phase: []byte(PhaseCode), Field: []byte("entrypoint"), Message: []byte("module main not found"), Detail: []byte("tree")}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, _, err := Configure(ctx, host, mux.Config{}, []byte(`{"app": "main:app"}`))
	cerr, ok := errors.AsType[*ConfigError](err)
	if sess != nil || !ok || cerr.Phase != PhaseCode || cerr.Field != "entrypoint" || cerr.Message != "module main not found" || cerr.Detail != "tree" {
		t.Fatalf("got %v %#v", sess, err)
	}
	if _, err := host.Write([]byte{0}); err == nil {
		t.Fatal("the connection is still open after a refusal")
	}
}

// A document the peer would refuse never goes on the wire.
func TestConfigureValidatesFirst(t *testing.T) {
	host, guest := net.Pipe()
	p := newPeer(t, guest, func([]byte) *message.ConfigResult { return &message.ConfigResult{OK: true} })
	bad := *goodConfig
	bad.Entrypoint = "main.py"
	_, _, err := Configure(context.Background(), host, mux.Config{}, &bad)
	cerr, ok := errors.AsType[*ConfigError](err)
	if !ok || cerr.Phase != PhaseValidate || cerr.Field != "entrypoint" {
		t.Fatalf("got %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if docs := p.received(); len(docs) != 0 {
		t.Fatalf("the peer received %q", docs)
	}
}

// A peer that goes away without answering is explained by the cause the
// caller gives ctx when it sees its process end.
func TestConfigurePeerEndIsExplainedByTheCause(t *testing.T) {
	host, guest := net.Pipe()
	var p *peer
	p = newPeer(t, guest, func([]byte) *message.ConfigResult { go p.sess.Close(); return nil })
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		<-p.sess.Done()
		time.Sleep(20 * time.Millisecond) // the process is seen to end a little later
		cancel(errors.New("the worker exited while starting (exit status 1)"))
	}()
	_, _, err := Configure(ctx, host, mux.Config{}, []byte(`{}`))
	if err == nil || !strings.Contains(err.Error(), "no CONFIG_RESULT: the worker exited while starting (exit status 1)") {
		t.Fatalf("got %v", err)
	}
}

// Without an answer, ctx ends the wait, and the error says which step was
// waiting.
func TestConfigureGivesUpWithTheContext(t *testing.T) {
	t.Run("no HELLO", func(t *testing.T) {
		host, guest := net.Pipe()
		defer guest.Close()
		go func() { // drain what the host writes; never answer
			buf := make([]byte, 4096)
			for {
				if _, err := guest.Read(buf); err != nil {
					return
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, _, err := Configure(ctx, host, mux.Config{}, []byte(`{}`))
		if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "no HELLO") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no result", func(t *testing.T) {
		host, guest := net.Pipe()
		newPeer(t, guest, func([]byte) *message.ConfigResult { return nil })
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, _, err := Configure(ctx, host, mux.Config{}, []byte(`{}`))
		if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "no CONFIG_RESULT") {
			t.Fatalf("got %v", err)
		}
	})
}
