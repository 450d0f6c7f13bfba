package loopfront

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The shared body buffer of a worker channel (protocol/SPEC.md §11.1): a
// control area, then two rings.
const (
	// sharedHeader is the control area, a page. Offsets 0, 8: the
	// response ring's released position (the host writes it) and the
	// request ring's (the worker writes it); 16, 24: the rings' sizes
	// (the host writes them before it sends the buffer).
	sharedHeader = 4096
	// responseRing carries response bodies, worker to host. The loop
	// releases each piece as it handles its frame, but a smaller ring
	// was slower (1 MiB: an eighth fewer 1 MiB answers side by side, and
	// a ring started again from its start whenever empty a quarter
	// fewer): the worker then soon writes again the lines the loop has
	// just read on the other core (BENCHMARKS.md, session 29).
	responseRing = 4 << 20
	// requestRing carries request bodies, host to worker. The worker
	// copies each piece out as its frame comes, so little of it is ever
	// in use; 1 MiB uploaded as fast as 2 MiB side by side, and each
	// page of it touched is resident in both processes.
	requestRing = 1 << 20
	// sharedSize is the whole buffer.
	sharedSize = sharedHeader + responseRing + requestRing
	// sharedRefSize is a DATA_SHARED payload: position and length.
	sharedRefSize = 12
	// sharedRequestMin is the least request body data sent through the
	// request ring: less goes in a DATA frame.
	sharedRequestMin = 16 << 10
)

// Offsets in the control area.
const (
	responseReleasedAt = 0
	requestReleasedAt  = 8
	responseSizeAt     = 16
	requestSizeAt      = 24
)

// sharedBuffer is the memory the host shares with one worker on a unix
// data channel (the sandbox backend). A big body crosses it instead of
// the channel's socket: the sender copies the bytes into its ring and
// sends a DATA_SHARED frame naming them, and the receiver takes them from
// there. That spares each body two copies through the kernel (into the
// socket and out of it) and most of the wake-ups. Response bodies: the
// worker puts them in the response ring, and the loop writes them to the
// client from there. Request bodies: the loop puts what it read of them
// in the request ring, and the worker copies them out.
//
// The worker can write anything anywhere in the buffer at any time, so
// the loop trusts nothing in it: it checks every DATA_SHARED frame
// against its own record of what it has released, and reads of the
// control area only the request ring's released position, which it
// ignores when it is not between what the worker released before and
// what the loop has put there. A worker that changes bytes while the
// other side has not yet taken them only spoils its own bodies. The memfd
// is sealed against shrinking and growing, so that the loop's mapping
// can never fault.
//
// Memory: a page of the buffer is charged to the process that first
// touches it (the worker for the response ring, as it writes a body; the
// agent for the request ring). A worker that names bytes it never wrote
// makes the loop fault those pages in, charged to the agent: at most the
// buffer's size per channel, as the channel's queues are bounded. Pages
// once written stay until the channel ends, like a heap that keeps its
// buffers.
type sharedBuffer struct {
	mem []byte
	// released: the response ring's bytes up to here are the worker's
	// again (the loop's own record, stored for the worker to read).
	released uint64
	// put is where the next request body piece goes; taken is how far
	// the worker has copied them out (what it last said, checked).
	put, taken uint64
}

// newSharedBuffer creates the buffer (a sealed memfd, mapped) and returns
// it with the descriptor to send to the worker; the caller closes the
// descriptor once sent.
func newSharedBuffer() (*sharedBuffer, int, error) {
	fd, err := unix.MemfdCreate("ferry-shared-body", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, -1, fmt.Errorf("creating the shared body buffer: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if err := unix.Ftruncate(fd, sharedSize); err != nil {
		return nil, -1, fmt.Errorf("sizing the shared body buffer: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return nil, -1, fmt.Errorf("sealing the shared body buffer: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, sharedSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, -1, fmt.Errorf("mapping the shared body buffer: %w", err)
	}
	binary.NativeEndian.PutUint64(mem[responseSizeAt:], responseRing)
	binary.NativeEndian.PutUint64(mem[requestSizeAt:], requestRing)
	ok = true
	return &sharedBuffer{mem: mem}, fd, nil
}

// word is the control area's 64-bit word at offset at.
func (b *sharedBuffer) word(at int) *uint64 {
	return (*uint64)(unsafe.Pointer(&b.mem[at]))
}

// take checks a DATA_SHARED payload (position and length) from the worker
// and returns the response bytes it names and the position that releases
// them. An error is a connection error: the worker broke the protocol.
func (b *sharedBuffer) take(payload []byte) ([]byte, uint64, error) {
	if b.mem == nil {
		return nil, 0, errors.New("DATA_SHARED after the shared buffer was closed")
	}
	if len(payload) != sharedRefSize {
		return nil, 0, fmt.Errorf("DATA_SHARED payload of %d bytes, not %d", len(payload), sharedRefSize)
	}
	pos := binary.BigEndian.Uint64(payload)
	n := uint64(binary.BigEndian.Uint32(payload[8:]))
	off := pos % responseRing
	switch {
	case n == 0 || n > maxFrameSize:
		return nil, 0, fmt.Errorf("DATA_SHARED of %d bytes (1 to %d)", n, maxFrameSize)
	case pos < b.released || pos > math.MaxUint64-n:
		return nil, 0, fmt.Errorf("DATA_SHARED at %d, before the released position %d", pos, b.released)
	case off+n > responseRing || pos+n-b.released > responseRing:
		return nil, 0, fmt.Errorf("DATA_SHARED of %d bytes at %d is not in the ring (released: %d)", n, pos, b.released)
	}
	at := sharedHeader + off
	return b.mem[at : at+n], pos + n, nil
}

// release tells the worker that the response ring's bytes before end may
// be reused.
func (b *sharedBuffer) release(end uint64) {
	if b.mem == nil {
		return // closed meanwhile: the worker is gone with its channel
	}
	b.released = end
	atomic.StoreUint64(b.word(responseReleasedAt), end)
}

// putRequest copies p, a piece of request body, into the request ring and
// returns its position; false if the ring has no room for it in one
// piece (it then goes in a DATA frame).
func (b *sharedBuffer) putRequest(p []byte) (uint64, bool) {
	if b.mem == nil {
		return 0, false
	}
	n := uint64(len(p))
	// What the worker says it has taken counts only between what it said
	// before and what was put: a worker that says more than it was given
	// cannot make the loop write past what it knows is free.
	if taken := atomic.LoadUint64(b.word(requestReleasedAt)); taken > b.taken && taken <= b.put {
		b.taken = taken
	}
	pos := b.put
	off := pos % requestRing
	if off+n > requestRing { // it would wrap: it goes at the ring's start
		pos += requestRing - off
		off = 0
	}
	if pos+n-b.taken > requestRing {
		return 0, false
	}
	copy(b.mem[sharedHeader+responseRing+off:], p)
	b.put = pos + n
	return pos, true
}

// close unmaps the buffer; it may be called on nil and more than once.
func (b *sharedBuffer) close() {
	if b != nil && b.mem != nil {
		unix.Munmap(b.mem)
		b.mem = nil
	}
}

// appendSharedRef appends a DATA_SHARED payload.
func appendSharedRef(b []byte, pos uint64, n int) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(b, pos), uint32(n))
}
