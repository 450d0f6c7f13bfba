package lifecycle

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferry-vm/ferry/protocol/message"
)

// Bounds of a program's output on its way to OnOutput.
const (
	// DefaultOutputRate is how many lines per second of one program's
	// output reach OnOutput unless Options.OutputRate says otherwise; a
	// burst of ten seconds' worth passes at once (a traceback, init's
	// replay of its ring when the session starts).
	DefaultOutputRate = 100
	// outputQueueLines and outputQueueBytes bound the lines admitted but
	// not yet delivered, while OnOutput is slow.
	outputQueueLines = 1024
	outputQueueBytes = 1 << 20
	// droppedReportEvery is how often a count of dropped lines is
	// delivered (as a line of source "ferry") while lines are dropped.
	droppedReportEvery = 2 * time.Second
)

// outputPump carries one program's output (LOG frames from the session's
// read loop, console lines from the backend) to OnOutput without ever
// making the producer wait: lines over the rate, or that find the queue
// full, are dropped and counted; a goroutine of its own delivers the rest
// and, every droppedReportEvery while lines are dropped, a line saying how
// many.
type outputPump struct {
	id        string
	deliver   func(programID string, l message.Log)
	onDropped func(programID string, n int)
	limit     *rate.Limiter
	perSecond float64

	lines   chan message.Log
	bytes   atomic.Int64 // of the lines queued
	dropped atomic.Int64 // since the last report

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// newOutputPump starts a pump; perSecond <= 0 means no rate limit.
func newOutputPump(id string, perSecond float64, deliver func(string, message.Log), onDropped func(string, int)) *outputPump {
	limit := rate.NewLimiter(rate.Inf, 0)
	if perSecond > 0 {
		limit = rate.NewLimiter(rate.Limit(perSecond), int(10*perSecond)+1)
	}
	p := &outputPump{id: id, deliver: deliver, onDropped: onDropped, limit: limit, perSecond: perSecond,
		lines: make(chan message.Log, outputQueueLines), stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

// admit takes one line's token from the rate; a line refused is counted
// as dropped. Called before decoding, so a flood costs the read loop
// little.
func (p *outputPump) admit() bool {
	if p.limit.Allow() {
		return true
	}
	p.dropped.Add(1)
	return false
}

// push queues an admitted line (it must own its bytes); it never blocks.
func (p *outputPump) push(l message.Log) {
	size := int64(len(l.Line) + len(l.Source))
	if p.bytes.Add(size) > outputQueueBytes {
		p.bytes.Add(-size)
		p.dropped.Add(1)
		return
	}
	select {
	case p.lines <- l:
	default:
		p.bytes.Add(-size)
		p.dropped.Add(1)
	}
}

// line admits and queues one line; a nil pump drops it.
func (p *outputPump) line(l message.Log) {
	if p != nil && p.admit() {
		p.push(l)
	}
}

// close delivers what is queued, reports what was dropped and ends the
// goroutine; it does not wait for it. Lines pushed later are dropped. A
// nil pump has nothing to close.
func (p *outputPump) close() {
	if p == nil {
		return
	}
	p.stopOnce.Do(func() { close(p.stop) })
}

func (p *outputPump) run() {
	defer close(p.done)
	tick := time.NewTicker(droppedReportEvery)
	defer tick.Stop()
	for {
		select {
		case l := <-p.lines:
			p.bytes.Add(-int64(len(l.Line) + len(l.Source)))
			p.deliver(p.id, l)
		case <-tick.C:
			p.report()
		case <-p.stop:
			for {
				select {
				case l := <-p.lines:
					p.bytes.Add(-int64(len(l.Line) + len(l.Source)))
					p.deliver(p.id, l)
					continue
				default:
				}
				break
			}
			p.report()
			return
		}
	}
}

// report delivers the count of lines dropped since the last report.
func (p *outputPump) report() {
	n := p.dropped.Swap(0)
	if n == 0 {
		return
	}
	if p.onDropped != nil {
		p.onDropped(p.id, int(n))
	}
	why := "the queue was full"
	if p.perSecond > 0 {
		why = fmt.Sprintf("over %g lines/s, or the queue was full", p.perSecond)
	}
	p.deliver(p.id, message.Log{Source: []byte("ferry"), UnixNano: uint64(time.Now().UnixNano()),
		Line: fmt.Appendf(nil, "%d lines of output dropped (%s)", n, why)})
}
