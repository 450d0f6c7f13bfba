package lifecycle

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// A boot is reported while it happens: "booting", "VM started", then
// "still booting" with the time so far and what it waits for, for as long
// as init has not answered; "program started" with init's timeline after.
func TestBootIsReportedWhileItHappens(t *testing.T) {
	be := newFakeBackend()
	logs := &syncbuf.Buffer{}
	m := newTestManager(t, be, Options{BootProgress: 10 * time.Millisecond, Log: slog.New(slog.NewTextHandler(logs, nil))})
	p := &Program{ID: "slow", Interface: contract.InterfaceASGI, Entrypoint: "main:app"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acquired := make(chan error, 1)
	go func() {
		inst, err := m.Acquire(ctx, p)
		if err == nil {
			inst.Release()
		}
		acquired <- err
	}()
	<-be.Started()
	for !strings.Contains(logs.String(), "still booting") {
		select {
		case <-ctx.Done():
			t.Fatalf("no progress while the boot was held:\n%s", logs.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	close(be.Gate)
	if err := <-acquired; err != nil {
		t.Fatal(err)
	}
	got := logs.String()
	order := []string{`msg=booting program=slow backend=fake`, `msg="VM started" program=slow vm="fake vm"`,
		`msg="still booting" program=slow elapsed=`, `waiting_for="init: kernel`, `msg="program started" program=slow`}
	at := 0
	for _, want := range order {
		i := strings.Index(got[at:], want)
		if i < 0 {
			t.Fatalf("no %q after the previous report in:\n%s", want, got)
		}
		at += i
	}
}
