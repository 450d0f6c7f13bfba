package supervise

import (
	"context"
	"errors"
	"reflect"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock's time moves only when the test task runs or Run sleeps.
type fakeClock struct {
	now    time.Time
	slept  []time.Duration
	onWait func() // called on every sleep, before it ends
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.slept = append(c.slept, d)
	c.now = c.now.Add(d)
	if c.onWait != nil {
		c.onWait()
	}
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// step is one life of the scripted task: a failed start, or a start (or
// the task already running) followed by a run of that long.
type step struct {
	fail bool
	run  time.Duration
}

func failed() step                              { return step{fail: true} }
func ran(d time.Duration) step                  { return step{run: d} }
func ms(n int) time.Duration                    { return time.Duration(n) * time.Millisecond }
func seconds(n int) time.Duration               { return time.Duration(n) * time.Second }
func delays(d ...time.Duration) []time.Duration { return d }

func TestRunDelays(t *testing.T) {
	exec := Policy{Initial: ms(100), Max: seconds(10), ResetAfter: seconds(10)}
	persist := Policy{Initial: seconds(1), Max: time.Minute, ResetAfter: 10 * time.Minute}
	for _, tc := range []struct {
		name    string
		policy  Policy
		running bool
		steps   []step
		want    []time.Duration // the delays slept, in order
		ended   int             // Ended calls
		failed  int             // Failed calls
	}{
		{"crashes double the delay up to Max", exec, true,
			[]step{ran(ms(5)), ran(ms(5)), ran(ms(5)), ran(ms(5)), ran(ms(5)), ran(ms(5)), ran(ms(5)), ran(ms(5))},
			delays(ms(100), ms(200), ms(400), ms(800), ms(1600), ms(3200), ms(6400), seconds(10)), 8, 0},
		{"a long run starts the delays over", exec, true,
			[]step{ran(ms(5)), ran(ms(5)), ran(seconds(11)), ran(ms(5))},
			delays(ms(100), ms(200), ms(100), ms(200)), 4, 0},
		{"a run of exactly ResetAfter is not long", exec, true,
			[]step{ran(ms(5)), ran(seconds(10))},
			delays(ms(100), ms(200)), 2, 0},
		{"failed starts double the delay too", exec, true,
			[]step{ran(ms(5)), failed(), failed(), ran(ms(5))},
			delays(ms(100), ms(200), ms(400), ms(800)), 2, 2},
		{"a task not yet running is started at once", persist, false,
			[]step{ran(seconds(30)), ran(seconds(30)), ran(11 * time.Minute)},
			delays(seconds(1), seconds(2), seconds(1)), 3, 0},
		{"a first start that fails is retried", persist, false,
			[]step{failed(), failed(), ran(seconds(1))},
			delays(seconds(1), seconds(2), seconds(4)), 1, 2},
		{"ASGI workers cap at 5 s", Policy{Initial: ms(100), Max: seconds(5), ResetAfter: seconds(10)}, true,
			[]step{ran(0), ran(0), ran(0), ran(0), ran(0), ran(0), ran(0)},
			delays(ms(100), ms(200), ms(400), ms(800), ms(1600), ms(3200), seconds(5)), 7, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fakeClock{now: time.Unix(0, 0)}
			steps := tc.steps
			var starts, waits, ended, failedN int
			task := Task{
				Running: tc.running,
				Start: func(context.Context) error {
					starts++
					if len(steps) == 0 {
						return ErrStop
					}
					if steps[0].fail {
						steps = steps[1:]
						return errors.New("no luck")
					}
					return nil
				},
				Wait: func(context.Context) error {
					waits++
					if len(steps) == 0 {
						t.Fatal("Wait without a step")
					}
					clk.now = clk.now.Add(steps[0].run)
					steps = steps[1:]
					return errors.New("exit status 1")
				},
				Ended: func(how error, in time.Duration) {
					ended++
					if how == nil || how.Error() != "exit status 1" {
						t.Errorf("Ended with %v", how)
					}
				},
				Failed: func(err error, in time.Duration) { failedN++ },
			}
			run(context.Background(), tc.policy, task, clk)
			if !reflect.DeepEqual(clk.slept, tc.want) {
				t.Errorf("delays %v, want %v", clk.slept, tc.want)
			}
			if ended != tc.ended || failedN != tc.failed {
				t.Errorf("Ended %d times, Failed %d times; want %d, %d", ended, failedN, tc.ended, tc.failed)
			}
			if len(steps) != 0 {
				t.Errorf("%d steps left", len(steps))
			}
		})
	}
}

// Ended and Failed are told the delay that is then slept.
func TestRunReportsTheComingDelay(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	var told []time.Duration
	starts := 0
	run(context.Background(), Policy{Initial: ms(100), Max: seconds(1), ResetAfter: seconds(1)}, Task{
		Running: true,
		Start: func(context.Context) error {
			starts++
			if starts == 1 {
				return errors.New("no luck")
			}
			return ErrStop
		},
		Wait:   func(context.Context) error { return nil },
		Ended:  func(_ error, in time.Duration) { told = append(told, in) },
		Failed: func(_ error, in time.Duration) { told = append(told, in) },
	}, clk)
	if !reflect.DeepEqual(told, clk.slept) || !reflect.DeepEqual(told, delays(ms(100), ms(200))) {
		t.Fatalf("told %v, slept %v", told, clk.slept)
	}
}

// ErrStop from Wait ends Run without a restart; so does the context,
// whether it ends while the task runs or while Run sleeps.
func TestRunStops(t *testing.T) {
	t.Run("Wait says stop", func(t *testing.T) {
		clk := &fakeClock{}
		run(context.Background(), Policy{Initial: ms(1), Max: ms(1)}, Task{
			Running: true,
			Start:   func(context.Context) error { t.Fatal("started"); return nil },
			Wait:    func(context.Context) error { return ErrStop },
		}, clk)
		if len(clk.slept) != 0 {
			t.Fatalf("slept %v", clk.slept)
		}
	})
	t.Run("context ends while the task runs", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		clk := &fakeClock{}
		run(ctx, Policy{Initial: ms(1), Max: ms(1)}, Task{
			Start: func(context.Context) error { return nil },
			Wait: func(ctx context.Context) error {
				cancel()
				<-ctx.Done()
				return ctx.Err()
			},
			Ended: func(error, time.Duration) { t.Fatal("a stopped task counted as ended") },
		}, clk)
		if len(clk.slept) != 0 {
			t.Fatalf("slept %v", clk.slept)
		}
	})
	t.Run("context ends while Run sleeps", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		clk := &fakeClock{onWait: cancel}
		starts := 0
		run(ctx, Policy{Initial: ms(1), Max: ms(1)}, Task{
			Start: func(context.Context) error { starts++; return errors.New("no luck") },
			Wait:  func(context.Context) error { return nil },
		}, clk)
		if starts != 1 {
			t.Fatalf("%d starts", starts)
		}
	})
	t.Run("a failed start after the context ended is not retried", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		clk := &fakeClock{}
		run(ctx, Policy{Initial: ms(1), Max: ms(1)}, Task{
			Start:  func(context.Context) error { cancel(); return context.Canceled },
			Wait:   func(context.Context) error { return nil },
			Failed: func(error, time.Duration) { t.Fatal("reported as a failure") },
		}, clk)
		if len(clk.slept) != 0 {
			t.Fatalf("slept %v", clk.slept)
		}
	})
}

// With the real clock: a task that keeps crashing is restarted after short
// real delays, and cancelling the context ends Run promptly even in the
// middle of a long delay.
func TestRunWithTheRealClock(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var starts atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Policy{Initial: ms(1), Max: time.Hour, ResetAfter: time.Hour}, Task{
			Start: func(context.Context) error {
				if starts.Add(1) == 4 {
					cancel()
				}
				return nil
			},
			Wait: func(context.Context) error { return nil },
		})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end")
	}
	if n := starts.Load(); n != 4 {
		t.Fatalf("%d starts", n)
	}
	// A long delay does not hold Run after cancel.
	ctx, cancel = context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Policy{Initial: time.Hour, Max: time.Hour}, Task{
			Running: true,
			Start:   func(context.Context) error { return nil },
			Wait:    func(context.Context) error { return nil },
		})
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run slept on after cancel")
	}
}

// Delay doubles from Initial and stops at Max.
func TestPolicyDelay(t *testing.T) {
	p := Policy{Initial: time.Second, Max: 5 * time.Second}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i, w := range want {
		if got := p.Delay(i + 1); got != w {
			t.Errorf("Delay(%d) = %s, want %s", i+1, got, w)
		}
	}
}
