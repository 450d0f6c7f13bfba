package mux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// heldWriter is a slow client: it holds each run LendTo hands it for a
// while, as a write to a slow socket does, and checks that the run did not
// change meanwhile (the stream must not receive into a buffer it lent) and
// that it cannot reach past its end (where the read loop may be receiving).
type heldWriter struct {
	got   bytes.Buffer
	runs  int
	hold  time.Duration
	fail  error // returned from the first Write, when set
	moved error // a run that changed while held
}

func (w *heldWriter) Write(p []byte) (int, error) {
	if w.fail != nil {
		return 0, w.fail
	}
	if cap(p) != len(p) && w.moved == nil {
		// Past the run the read loop may be filling the same array.
		w.moved = fmt.Errorf("run %d: capacity %d past its %d bytes", w.runs, cap(p), len(p))
	}
	before := bytes.Clone(p)
	time.Sleep(w.hold)
	if !bytes.Equal(before, p) && w.moved == nil {
		w.moved = fmt.Errorf("run %d (%d bytes) changed while the writer held it", w.runs, len(p))
	}
	w.runs++
	w.got.Write(p)
	return len(p), nil
}

// answering opens a stream whose peer answers with body, written in
// pieces of the given sizes in turn, then runs end (nil: the body ends
// with FIN).
func answering(t *testing.T, window uint32, body []byte, pieces []int, end func(*Stream)) *Stream {
	t.Helper()
	c, s := sessionPair(t, Config{InitialWindow: window}, Config{})
	ctx := testContext(t)
	go func() {
		st, err := s.Accept(ctx)
		if err != nil {
			return
		}
		if err := st.WriteResponse(&message.ResponseHead{Status: 200}, nil, false); err != nil {
			return
		}
		for i, rest := 0, body; len(rest) > 0; i++ {
			n := min(pieces[i%len(pieces)], len(rest))
			if _, err := st.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
		if end == nil {
			st.CloseWrite()
			return
		}
		end(st)
	}()
	st, err := c.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte("/")}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		t.Fatal(err)
	}
	return st
}

// LendTo delivers a body many windows long whole and in order to a slow
// writer, in runs of at most a window, never touching a run it lent.
func TestLendToDeliversTheBodyWithoutTouchingLentRuns(t *testing.T) {
	const window = 64 << 10
	body := make([]byte, 3<<20+12345)
	for i := range body {
		body[i] = byte(i*7 + i>>11)
	}
	st := answering(t, window, body, []int{1, 1000, 70000, 4096, 65536, 333}, nil)
	w := &heldWriter{hold: 200 * time.Microsecond}
	n, err := st.LendTo(w)
	if err != nil || n != int64(len(body)) {
		t.Fatalf("LendTo: %d bytes, %v; want %d, nil", n, err, len(body))
	}
	if w.moved != nil {
		t.Fatal(w.moved)
	}
	if !bytes.Equal(w.got.Bytes(), body) {
		t.Fatalf("the body arrived changed (%d bytes, want %d)", w.got.Len(), len(body))
	}
	if w.runs < len(body)/window {
		t.Errorf("%d runs for %d bytes: a run is at most a window of %d", w.runs, len(body), window)
	}
	// Once the body is done, the stream answers as Read does.
	if n, err := st.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("Read after LendTo: %d, %v; want 0, EOF", n, err)
	}
}

// A writer's error ends LendTo with that error.
func TestLendToStopsAtTheWritersError(t *testing.T) {
	gone := errors.New("client went away")
	st := answering(t, 0, bytes.Repeat([]byte("x"), 1<<20), []int{16 << 10}, nil)
	w := &heldWriter{fail: gone}
	if _, err := st.LendTo(w); !errors.Is(err, gone) {
		t.Fatalf("LendTo: %v, want the writer's error", err)
	}
	st.Reset(frame.CodeCancel, "client went away")
}

// A writer that takes less than it was lent, without an error, ends LendTo
// with io.ErrShortWrite, as io.Copy does.
func TestLendToReportsAShortWrite(t *testing.T) {
	st := answering(t, 0, []byte("0123456789abcdefghij"), []int{20}, nil)
	n, err := st.LendTo(halfWriter{})
	if !errors.Is(err, io.ErrShortWrite) || n <= 0 || n >= 20 {
		t.Fatalf("LendTo: %d, %v; want part of 20 bytes and io.ErrShortWrite", n, err)
	}
	st.Reset(frame.CodeCancel, "done")
}

// halfWriter takes half of what it is given.
type halfWriter struct{}

func (halfWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

// io.Copy from a stream reads it through its own buffer, as before: a
// stream is not an io.WriterTo, whose lending would hold a second receive
// buffer for the copy's whole life.
func TestAStreamIsNotAWriterTo(t *testing.T) {
	if _, ok := any(&Stream{}).(io.WriterTo); ok {
		t.Fatal("*Stream is an io.WriterTo: io.Copy would lend its buffers")
	}
}

// A body that the peer resets part way gives the bytes that came before
// the reset, then the stream's error.
func TestLendToEndsWithTheStreamsError(t *testing.T) {
	sent := bytes.Repeat([]byte("y"), 100<<10)
	st := answering(t, 0, sent, []int{10 << 10}, func(st *Stream) {
		time.Sleep(50 * time.Millisecond) // the bytes arrive before the reset
		st.Reset(frame.CodeAppError, "the app failed")
	})
	w := &heldWriter{}
	_, err := st.LendTo(w)
	var serr *StreamError
	if !errors.As(err, &serr) || serr.Code != frame.CodeAppError {
		t.Fatalf("LendTo: %v, want the peer's APP_ERROR", err)
	}
	if !bytes.Equal(w.got.Bytes(), sent) {
		t.Errorf("%d bytes before the reset, want the %d sent", w.got.Len(), len(sent))
	}
}

// LendTo waits no longer than the stream's read deadline.
func TestLendToKeepsTheReadDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	st := answering(t, 0, []byte("a little"), []int{8}, func(st *Stream) {
		<-release // nothing more until the test is over
		st.CloseWrite()
	})
	st.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	w := &heldWriter{}
	if _, err := st.LendTo(w); !errors.Is(err, ErrTimeout) {
		t.Fatalf("LendTo: %v, want ErrTimeout", err)
	}
	if w.got.String() != "a little" {
		t.Errorf("before the deadline: %q", w.got.String())
	}
	st.Reset(frame.CodeCancel, "done")
}

// Payloads the read loop reads straight into a stream's buffer
// (receiveTarget) arrive whole and in order whatever the reader does
// meanwhile: Read in small pieces (which starts the buffer over each time
// it is empty) or LendTo (which lends it), on many streams at once.
func TestDirectReadsArriveWholeUnderEveryReader(t *testing.T) {
	body := make([]byte, 2<<20+777)
	for i := range body {
		body[i] = byte(i ^ i>>9)
	}
	errs := make(chan error, 16)
	for i := range 16 {
		st := answering(t, 0, body, []int{64 << 10, directReadMin, directReadMin - 1, 100 << 10}, nil)
		go func() {
			var got bytes.Buffer
			var err error
			if i%2 == 0 {
				buf := make([]byte, 1000+i)
				for {
					var n int
					n, err = st.Read(buf)
					got.Write(buf[:n])
					if err != nil {
						break
					}
				}
				if err == io.EOF {
					err = nil
				}
			} else {
				w := &heldWriter{hold: 50 * time.Microsecond}
				_, err = st.LendTo(w)
				if err == nil {
					err = w.moved
				}
				got = w.got
			}
			if err == nil && !bytes.Equal(got.Bytes(), body) {
				err = fmt.Errorf("stream %d: the body arrived changed (%d bytes, want %d)", i, got.Len(), len(body))
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
