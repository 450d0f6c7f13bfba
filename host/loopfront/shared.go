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

// The shared body buffer of a worker channel (protocol/SPEC.md §11.1).
const (
	// sharedSize is the whole buffer: its control area and its data.
	sharedSize = 4 << 20
	// sharedHeader is the control area at its start; the first 8 bytes
	// are the released position, written by the host only.
	sharedHeader = 64
	// sharedData is the size of the data area, the ring the positions
	// of DATA_SHARED frames wrap around.
	sharedData = sharedSize - sharedHeader
	// sharedRefSize is a DATA_SHARED payload: position and length.
	sharedRefSize = 12
)

// sharedBuffer is the memory the host shares with one worker on a unix
// data channel (the sandbox backend): the worker copies a big response
// body into it and sends a DATA_SHARED frame naming the bytes instead of
// a DATA frame carrying them, and the loop writes them to the client
// from there. That spares the body's trip through the channel (the
// worker's copy into the socket and the loop's copy out of it).
//
// The worker can write anything anywhere in the buffer at any time, so
// the loop trusts nothing in it: it checks every frame against its own
// record of what it has released, never reads the control area, and only
// writes the released position there for the worker to read. The bytes
// it writes to a client are the worker's own answer; a worker that
// changes them while they are written only spoils its own answer. The
// memfd is sealed against shrinking and growing, so that the loop's
// mapping can never fault.
//
// Memory: a page of the buffer is charged to the process that first
// touches it, the worker as it writes a body. A worker that names bytes
// it never wrote makes the loop fault those pages in, charged to the
// agent: at most sharedSize per channel, as the channel's queues are
// bounded. Pages once written stay until the channel ends (up to
// sharedSize per worker, like a heap that keeps its buffers).
type sharedBuffer struct {
	mem      []byte
	released uint64 // the loop's own record; stored to the control area for the worker
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
	ok = true
	return &sharedBuffer{mem: mem}, fd, nil
}

// take checks a DATA_SHARED payload (position and length) and returns
// the bytes it names and the position that releases them. An error is a
// connection error: the worker broke the protocol.
func (b *sharedBuffer) take(payload []byte) ([]byte, uint64, error) {
	if b.mem == nil {
		return nil, 0, errors.New("DATA_SHARED after the shared buffer was closed")
	}
	if len(payload) != sharedRefSize {
		return nil, 0, fmt.Errorf("DATA_SHARED payload of %d bytes, not %d", len(payload), sharedRefSize)
	}
	pos := binary.BigEndian.Uint64(payload)
	n := uint64(binary.BigEndian.Uint32(payload[8:]))
	off := pos % sharedData
	switch {
	case n == 0 || n > maxFrameSize:
		return nil, 0, fmt.Errorf("DATA_SHARED of %d bytes (1 to %d)", n, maxFrameSize)
	case pos < b.released || pos > math.MaxUint64-n:
		return nil, 0, fmt.Errorf("DATA_SHARED at %d, before the released position %d", pos, b.released)
	case off+n > sharedData || pos+n-b.released > sharedData:
		return nil, 0, fmt.Errorf("DATA_SHARED of %d bytes at %d is not in the buffer (released: %d)", n, pos, b.released)
	}
	return b.mem[sharedHeader+off : sharedHeader+off+n], pos + n, nil
}

// release tells the worker that everything before end may be reused.
func (b *sharedBuffer) release(end uint64) {
	if b.mem == nil {
		return // closed meanwhile: the worker is gone with its channel
	}
	b.released = end
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&b.mem[0])), end)
}

// close unmaps the buffer; it may be called on nil and more than once.
func (b *sharedBuffer) close() {
	if b != nil && b.mem != nil {
		unix.Munmap(b.mem)
		b.mem = nil
	}
}
