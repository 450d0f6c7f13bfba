package mux

// A stream's body: reading what arrived (returning receive window to the
// peer as it is read), writing DATA frames within the send window, and the
// pooled receive buffers.

import (
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/ferry-vm/ferry/protocol/frame"
)

// writableLocked reports why nothing more may be written, if so.
func (st *Stream) writableLocked() error {
	switch {
	case st.err != nil:
		return st.err
	case st.writeErr != nil:
		return st.writeErr
	case st.localFin:
		return ErrWriteClosed
	}
	return nil
}

// Read reads body bytes. It returns io.EOF once the peer has finished and
// every byte has been read; Trailers then returns its trailers.
func (st *Stream) Read(p []byte) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for {
		if n, done, err := st.readNowLocked(p, "Read"); done {
			return n, err
		}
		if err := st.wait(nil, &st.readable, st.readDeadline); err != nil {
			return 0, err
		}
	}
}

// readNowLocked is what Read and TryRead do without waiting: copy out
// buffered bytes, or report the end or the failure of the stream. done is
// false when there is nothing to report yet.
func (st *Stream) readNowLocked(p []byte, caller string) (n int, done bool, err error) {
	if st.mode == modeWebSocket {
		return 0, true, errors.New("mux: " + caller + " on a websocket stream, use ReadMessage")
	}
	if n := len(st.buf) - st.off; n > 0 {
		n = copy(p, st.buf[st.off:])
		st.consumeLocked(n, n)
		return n, true, nil
	}
	switch {
	case st.remoteFin:
		return 0, true, io.EOF
	case st.err != nil:
		return 0, true, st.err
	}
	return 0, false, nil
}

// TryRead is Read without waiting: it returns what is buffered (possibly
// nothing, with a nil error), and io.EOF once the peer has finished and
// everything was read, together with the last bytes when they are the
// ones returned. Relays use it to send a head together with the body
// bytes that arrived with it, and to know whether that body is complete.
func (st *Stream) TryRead(p []byte) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	n, _, err := st.readNowLocked(p, "TryRead")
	if err == nil && n > 0 && st.remoteFin && st.off == len(st.buf) {
		err = io.EOF // nothing follows the bytes just read
	}
	return n, err
}

// LendTo writes the body to w as it arrives, until the peer has finished
// (it returns nil then) or the stream fails. Each run of bytes waiting in
// the stream goes to w as it lies in the stream's receive buffer, not
// copied into another one first: the buffer is lent to w whole and the
// stream goes on receiving into a second one, which the two swap (so a
// stream that LendTo reads holds two receive buffers, each at most a
// window's worth). Receive window returns to the peer as each run is
// lent, as Read returns it as it copies.
//
// A run is taken from the stream whole: when w fails, or takes less than
// all of it (io.ErrShortWrite), the rest is lost, and LendTo is for a
// caller that then resets the stream, as a relay does when its client
// goes. (It is not WriteTo, so that io.Copy keeps reading a stream with
// Read, through its own buffer.) A websocket stream is an error, as for
// Read.
func (st *Stream) LendTo(w io.Writer) (int64, error) {
	var written int64
	var spare *[]byte // the other buffer's handle, when w has given it back
	defer func() {
		if spare == nil {
			return
		}
		st.mu.Lock()
		reading := st.receiving == spare // the read loop still reads into it
		st.mu.Unlock()
		if !reading {
			putRecvBuf(spare, *spare)
		}
	}()
	st.mu.Lock()
	for {
		if st.mode == modeWebSocket {
			st.mu.Unlock()
			return written, errors.New("mux: LendTo on a websocket stream, use ReadMessage")
		}
		if len(st.buf) == st.off {
			switch {
			case st.remoteFin:
				st.mu.Unlock()
				return written, nil
			case st.err != nil:
				st.mu.Unlock()
				return written, st.err
			}
			if err := st.wait(nil, &st.readable, st.readDeadline); err != nil {
				st.mu.Unlock()
				return written, err
			}
			continue
		}
		// The run's capacity ends with it: past it the read loop may be
		// reading a payload into the same array (receiveTarget).
		run, handle := st.buf[st.off:len(st.buf):len(st.buf)], st.bufPooled
		full := st.buf
		st.buf, st.bufPooled, st.off = nil, nil, 0
		if spare != nil {
			st.buf, st.bufPooled, spare = (*spare)[:0], spare, nil
		}
		st.creditLocked(len(run))
		if st.remoteFin && st.bufPooled != nil {
			// Nothing more will arrive: the empty buffer can serve
			// another stream.
			putRecvBuf(st.bufPooled, st.buf)
			st.buf, st.bufPooled = nil, nil
		}
		st.mu.Unlock()
		n, err := w.Write(run)
		written += int64(n)
		if handle != nil {
			*handle = full[:0]
			spare = handle
		}
		if err == nil && n != len(run) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return written, err
		}
		st.mu.Lock()
	}
}

// consumeLocked marks n buffered bytes as read and returns credit worth
// cost bytes to the peer once half a window has been read.
func (st *Stream) consumeLocked(n int, cost int) {
	st.off += n
	if st.off == len(st.buf) {
		st.buf, st.off = st.buf[:0], 0
		if st.remoteFin && st.bufPooled != nil {
			// Nothing more will arrive: the buffer can serve another stream.
			putRecvBuf(st.bufPooled, st.buf)
			st.buf, st.bufPooled = nil, nil
		}
	}
	st.creditLocked(cost)
}

// creditLocked counts cost bytes as read and returns them to the peer as
// receive window once half a window has been read.
func (st *Stream) creditLocked(cost int) {
	if st.remoteFin || st.err != nil {
		return
	}
	st.consumed += uint32(cost)
	if st.consumed >= st.s.cfg.InitialWindow/2 {
		inc := st.consumed
		st.consumed = 0
		st.recvCredit += inc
		var p [4]byte
		binary.BigEndian.PutUint32(p[:], inc)
		_ = st.s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeWindowUpdate, StreamID: st.id}, payload: p[:]}, true)
	}
}

// Buffered returns how many received bytes wait to be read. It never
// exceeds the receive window the peer was granted.
func (st *Stream) Buffered() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.buf) - st.off
}

// Write sends p as DATA frames, waiting for send window as needed.
func (st *Stream) Write(p []byte) (int, error) {
	return st.writeData(p, false)
}

// WriteLast sends p as the last body bytes, ending the stream in the same
// frame.
func (st *Stream) WriteLast(p []byte) (int, error) {
	return st.writeData(p, true)
}

func (st *Stream) writeData(p []byte, fin bool) (int, error) {
	written := 0
	for {
		st.mu.Lock()
		if err := st.writableLocked(); err != nil {
			st.mu.Unlock()
			return written, err
		}
		if len(p) == 0 {
			if !fin {
				st.mu.Unlock()
				return written, nil
			}
			st.localFin = true
			st.mu.Unlock()
			err := st.s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeData, Flags: frame.FlagFin, StreamID: st.id}}, false)
			st.maybeRemove()
			return written, err
		}
		for st.sendWindow <= 0 && st.err == nil && st.writeErr == nil {
			if err := st.wait(nil, &st.writable, st.writeDeadline); err != nil {
				st.mu.Unlock()
				return written, err
			}
		}
		if err := st.writableLocked(); err != nil {
			st.mu.Unlock()
			return written, err
		}
		// As much as the window allows goes out now: one frame, or
		// several of the peer's largest in one vectored write.
		maxFrame := int(st.s.peer.MaxFrameSize)
		n := int(min(int64(len(p)), st.sendWindow))
		if st.s.compressing() {
			n = min(n, maxFrame) // each frame is compressed on its own
		}
		st.sendWindow -= int64(n)
		last := fin && n == len(p)
		if last {
			st.localFin = true
		}
		st.mu.Unlock()

		var flags frame.Flags
		if last {
			flags = frame.FlagFin
		}
		var err error
		if n <= maxFrame {
			err = st.s.sendPayload(frame.Header{Type: frame.TypeData, Flags: flags, StreamID: st.id}, p[:n])
		} else {
			err = st.s.w.write(dataFrames(st.id, p[:n], maxFrame, flags), false)
		}
		if err != nil {
			return written, err
		}
		written += n
		p = p[n:]
		if last {
			st.maybeRemove()
			return written, nil
		}
	}
}

// dataFrames cuts p into DATA frames of at most size bytes on stream id,
// flags (FIN) on the last.
func dataFrames(id uint32, p []byte, size int, flags frame.Flags) []frameSpec {
	frames := make([]frameSpec, 0, (len(p)+size-1)/size)
	for len(p) > 0 {
		n := min(len(p), size)
		f := frameSpec{h: frame.Header{Type: frame.TypeData, StreamID: id}, payload: p[:n]}
		if n == len(p) {
			f.h.Flags = flags
		}
		frames = append(frames, f)
		p = p[n:]
	}
	return frames
}

// CloseWrite ends this side of the stream without trailers.
func (st *Stream) CloseWrite() error { return st.CloseWriteTrailers(nil) }

// Receive buffers of small bodies are reused: most request and response
// bodies are small, and a fresh buffer per stream is an allocation on
// each side of every round trip.
const (
	recvBufSize    = 4 << 10   // capacity of a new pooled buffer
	recvBufPoolMax = 512 << 10 // larger buffers are left to the GC
)

var recvBufPool = sync.Pool{New: func() any { b := make([]byte, 0, recvBufSize); return &b }}

// getRecvBuf returns a pooled buffer's handle.
func getRecvBuf() *[]byte {
	return recvBufPool.Get().(*[]byte)
}

// putRecvBuf returns the buffer b (which may have grown from the one handle
// held) to the pool, unless it grew too large.
func putRecvBuf(handle *[]byte, b []byte) {
	if cap(b) > recvBufPoolMax {
		return
	}
	*handle = b[:0]
	recvBufPool.Put(handle)
}
