// Package supervise is Ferry's one restart loop: it keeps a task (a
// program's process, an ASGI worker, a persistent program's VM) running,
// starting it again whenever it ends, after a delay that doubles while it
// keeps failing and starts over once it has run long enough. Its users
// and their policies (each documented where it is set):
//
//   - init's executable program: 100 ms doubling to 10 s, from 100 ms
//     again after 10 s of running (guest/app/executable);
//   - init's ASGI workers: 100 ms doubling to 5 s, likewise after 10 s
//     (guest/app/asgi);
//   - the host's persistent programs: 1 s doubling to 1 min, from 1 s
//     again after ten times the longest delay of running (host/lifecycle).
package supervise

import (
	"context"
	"errors"
	"time"
)

// Policy says how long to wait before each restart.
type Policy struct {
	// Initial is the first delay, and the delay after a long run.
	Initial time.Duration
	// Max caps the delay, which doubles after every restart.
	Max time.Duration
	// ResetAfter is how long the task must have run for the next delay to
	// be Initial again.
	ResetAfter time.Duration
}

// Delay returns the delay before the n-th try after a failure (n from
// 1): Initial, doubling with each one, capped at Max. Run's restarts
// follow it, and so do retries elsewhere (host/trigger's deliveries).
func (p Policy) Delay(n int) time.Duration {
	d := p.Initial
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// backoff is the delay state of one supervised task.
type backoff struct {
	p Policy
	n int // restarts since the last long run
}

// delay returns the delay before the coming restart: the policy's next.
func (b *backoff) delay() time.Duration {
	b.n++
	return b.p.Delay(b.n)
}

// ran tells b that the task ran for d before ending: a run longer than
// ResetAfter makes the next delay Initial.
func (b *backoff) ran(d time.Duration) {
	if d > b.p.ResetAfter {
		b.n = 0
	}
}

// ErrStop, returned by a Task's Start or Wait, ends Run: the task is being
// stopped on purpose and must not be started again.
var ErrStop = errors.New("supervise: stop")

// Task is what Run keeps running. Its functions run on Run's goroutine,
// one at a time.
type Task struct {
	// Running says the task was started before Run was called (its first
	// start, and reporting that failure, are the caller's): Run begins by
	// waiting for it to end instead of starting it.
	Running bool
	// Start starts the task. An error is a failed start, and Start is
	// called again after the next delay; ErrStop ends Run.
	Start func(ctx context.Context) error
	// Wait returns when the task Start started has ended, with how it
	// ended (for Ended; nil if there is nothing to say), or when ctx has
	// ended. ErrStop ends Run.
	Wait func(ctx context.Context) error
	// Ended, if set, is told that the task ended (how, as Wait said) and
	// in how long it will be started again. For the log.
	Ended func(how error, in time.Duration)
	// Failed, if set, is told that a start failed (err, as Start said)
	// and in how long it will be tried again. For the log.
	Failed func(err error, in time.Duration)
}

// Run keeps t running until ctx ends or t returns ErrStop: it starts t
// (unless t.Running), waits for it to end, waits the policy's delay and
// starts it again, and so on; a failed start is tried again after the next
// delay.
func Run(ctx context.Context, p Policy, t Task) {
	run(ctx, p, t, realClock{})
}

// clock is what Run needs of time; the tests use a fake one.
type clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

func run(ctx context.Context, p Policy, t Task, clk clock) {
	b := backoff{p: p}
	running := t.Running
	for {
		if !running {
			if err := t.Start(ctx); err != nil {
				if ctx.Err() != nil || errors.Is(err, ErrStop) {
					return
				}
				d := b.delay()
				if t.Failed != nil {
					t.Failed(err, d)
				}
				if !sleep(ctx, clk, d) {
					return
				}
				continue
			}
		}
		began := clk.Now()
		how := t.Wait(ctx)
		if ctx.Err() != nil || errors.Is(how, ErrStop) {
			return
		}
		b.ran(clk.Now().Sub(began))
		d := b.delay()
		if t.Ended != nil {
			t.Ended(how, d)
		}
		if !sleep(ctx, clk, d) {
			return
		}
		running = false
	}
}

// sleep waits d, or reports false when ctx ends first.
func sleep(ctx context.Context, clk clock, d time.Duration) bool {
	select {
	case <-clk.After(d):
		return ctx.Err() == nil
	case <-ctx.Done():
		return false
	}
}
