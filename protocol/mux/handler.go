package mux

import "time"

// handlerIdleTime is how long a handler goroutine waits for another stream
// before it exits.
const handlerIdleTime = 30 * time.Second

// dispatch gives a new peer-opened stream to Config.Handler. An idle
// handler goroutine takes it if there is one; otherwise a new goroutine
// starts. Reusing goroutines keeps their grown stacks: a fresh goroutine
// starts with a small stack and copies it, twice, on its way down to the
// write syscall, which costs microseconds on every short request.
func (s *Session) dispatch(st *Stream) {
	select {
	case s.handlerIdle <- st:
	default:
		go s.handlerLoop(st)
	}
}

// handlerLoop runs the handler on st, then on further streams handed over
// by dispatch, until it has been idle for handlerIdleTime or the session
// closes.
func (s *Session) handlerLoop(st *Stream) {
	var idle *time.Timer
	for {
		s.cfg.Handler(st)
		st = nil // do not keep the finished stream alive while idle
		if idle == nil {
			idle = time.NewTimer(handlerIdleTime)
		} else {
			idle.Reset(handlerIdleTime)
		}
		select {
		case st = <-s.handlerIdle:
		case <-idle.C:
			return
		case <-s.closed:
			idle.Stop()
			return
		}
	}
}
