package httpstream

import (
	"io"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// BodyCopy is an HTTP request body being copied to a stream in the
// background (the answer is read meanwhile: a receiver may answer before
// it has read the whole body).
type BodyCopy struct {
	done chan struct{} // closed when the copy has ended, before the stream is reset
	// set before done is closed:
	tooLarge  bool  // the body went past the limit
	clientErr error // reading the body failed: malformed, cut short, too slow
}

// CopyBody starts copying body to st, ending st's side after it, or
// resetting st when it fails: BODY_TOO_LARGE past maxBody bytes (0: no
// limit), CANCEL when reading body or writing st fails.
func CopyBody(body io.Reader, st *mux.Stream, maxBody int64) *BodyCopy {
	b := &BodyCopy{done: make(chan struct{})}
	go func() {
		src := &errReader{r: body}
		var in io.Reader = src
		if maxBody > 0 {
			in = io.LimitReader(src, maxBody+1)
		}
		buf := bodyBuffers.Get().(*[]byte)
		n, err := io.CopyBuffer(st, in, *buf)
		bodyBuffers.Put(buf)
		var code uint32
		var reason string
		switch {
		case maxBody > 0 && n > maxBody:
			b.tooLarge = true
			code, reason = frame.CodeBodyTooLarge, "request body too large"
		case src.err != nil:
			b.clientErr = src.err
			code, reason = frame.CodeCancel, "the client's request body broke off: "+src.err.Error()
		case err != nil:
			code, reason = frame.CodeCancel, "relaying the request body: "+err.Error()
		}
		close(b.done)
		if reason != "" {
			st.Reset(code, reason)
			return
		}
		_ = st.CloseWrite()
	}()
	return b
}

// Outcome reports how the copy failed, if it has ended: the body was too
// large, or reading it failed with clientErr. It first waits up to wait
// for the copy to end (a client whose connection failed is failing its
// body read too).
func (b *BodyCopy) Outcome(wait time.Duration) (tooLarge bool, clientErr error) {
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-b.done:
		case <-t.C:
		}
	}
	select {
	case <-b.done:
		return b.tooLarge, b.clientErr
	default:
		return false, nil
	}
}

// Wait waits until the copy has ended (net/http forbids reading a
// request's body after its handler returned).
func (b *BodyCopy) Wait() { <-b.done }

// errReader remembers why reading failed, to tell the client's fault
// from the stream's.
type errReader struct {
	r   io.Reader
	err error
}

func (c *errReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// bodyBuffers holds the buffers bodies are copied through.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}
