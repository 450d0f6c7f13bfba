package lifecycle

import (
	"log/slog"
	"sync"
	"time"
)

// DefaultBootProgress is how often a boot still in progress is reported
// (Options.BootProgress): a first boot under TCG takes tens of seconds,
// and the operator should never wait a silent minute.
const DefaultBootProgress = 10 * time.Second

// bootProgress reports one boot while it happens, in the agent's log:
// "booting" when it begins, "VM started" once the backend has made the VM
// (the qemu backend packs the code first), then every period "still
// booting" with the time so far, what the agent waits for and the VM's
// last console line. init's own timeline (kernel, mounts, network, code,
// app) comes with its answer, in "program started".
type bootProgress struct {
	log      *slog.Logger
	began    time.Time
	stop     chan struct{}
	finished chan struct{} // closed when the reports have ended
	stopped  sync.Once

	mu      sync.Mutex
	waiting string // what the boot waits for now
	console string // the VM's last console line
}

// consoleShown bounds the console line a progress report carries.
const consoleShown = 200

// startBootProgress logs the boot's start and reports it every period
// until done.
func startBootProgress(log *slog.Logger, backend string, period time.Duration) *bootProgress {
	b := &bootProgress{log: log, began: time.Now(), stop: make(chan struct{}), finished: make(chan struct{}),
		waiting: "the backend to make the VM"}
	log.Info("booting", "backend", backend)
	if period > 0 {
		go b.report(period)
	} else {
		close(b.finished)
	}
	return b
}

func (b *bootProgress) report(period time.Duration) {
	defer close(b.finished)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-tick.C:
		}
		b.mu.Lock()
		waiting, console := b.waiting, b.console
		b.mu.Unlock()
		attrs := []any{"elapsed", b.elapsed(), "waiting_for", waiting}
		if console != "" {
			attrs = append(attrs, "console", console)
		}
		b.log.Info("still booting", attrs...)
	}
}

// started says the backend has made the VM: now init boots and takes its
// configuration.
func (b *bootProgress) started(vm string) {
	b.mu.Lock()
	b.waiting = "init: kernel, mounts, transport, then the configuration and the app"
	b.mu.Unlock()
	b.log.Info("VM started", "vm", vm, "elapsed", b.elapsed())
}

// consoleLine keeps the VM's last console line for the next report.
func (b *bootProgress) consoleLine(line string) {
	if len(line) > consoleShown {
		line = line[:consoleShown] + "…"
	}
	b.mu.Lock()
	b.console = line
	b.mu.Unlock()
}

// done ends the reports (the boot succeeded or failed: start logs which)
// and returns once the last one is written.
func (b *bootProgress) done() {
	b.stopped.Do(func() { close(b.stop) })
	<-b.finished
}

func (b *bootProgress) elapsed() time.Duration {
	return time.Since(b.began).Round(100 * time.Millisecond)
}
