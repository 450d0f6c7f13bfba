package app

import "sync"

// copyBufferSize is the size of the buffers the runners copy bodies with.
const copyBufferSize = 64 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// CopyBuffer lends a buffer of 64 KiB for copying a body between a stream
// and the program; give it back with ReturnCopyBuffer. Pooled, because a
// fresh one per request is an allocation on every request's path.
func CopyBuffer() *[]byte { return copyBuffers.Get().(*[]byte) }

// ReturnCopyBuffer gives back a buffer CopyBuffer lent.
func ReturnCopyBuffer(b *[]byte) { copyBuffers.Put(b) }
