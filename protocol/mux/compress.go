package mux

import (
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// compressor holds the codecs of one session. Decoding happens only on the
// read loop; encoding may happen on any writer, so encoders are pooled.
type compressor struct {
	maxDecoded int

	zdecOnce sync.Once
	zdec     *zstd.Decoder
	zdecErr  error
	zscratch []byte // decode target, used only by the read loop

	zencOnce sync.Once
	zenc     *zstd.Encoder
	zencErr  error

	scratch sync.Pool // *[]byte for compressed output
}

func newCompressor(maxDecoded uint32) *compressor {
	return &compressor{maxDecoded: int(maxDecoded)}
}

// decompress appends the decoded form of a compressed payload (algorithm
// byte first) to dst. The decoded size may not exceed the frame size this
// side accepts, so a small frame cannot expand without bound.
func (c *compressor) decompress(dst, p []byte, accepted uint32) ([]byte, error) {
	if len(p) < 1 {
		return dst, errors.New("compressed payload without algorithm byte")
	}
	alg, body := uint32(p[0]), p[1:]
	if accepted&alg == 0 || (alg != message.CompressS2 && alg != message.CompressZstd) {
		return dst, fmt.Errorf("compression algorithm %d was not negotiated", alg)
	}
	switch alg {
	case message.CompressS2:
		n, err := s2.DecodedLen(body)
		if err != nil {
			return dst, fmt.Errorf("bad s2 payload: %v", err)
		}
		if n > c.maxDecoded {
			return dst, fmt.Errorf("s2 payload decodes to %d bytes, over the %d-byte frame limit", n, c.maxDecoded)
		}
		start := len(dst)
		dst = growTo(dst, start+n)
		if _, err := s2.Decode(dst[start:start+n], body); err != nil {
			return dst[:start], fmt.Errorf("bad s2 payload: %v", err)
		}
		return dst, nil
	default:
		dec, err := c.zstdDecoder()
		if err != nil {
			return dst, err
		}
		// With the cap limit, DecodeAll fails rather than grow past
		// cap(zscratch), which is exactly the frame limit.
		if c.zscratch == nil {
			c.zscratch = make([]byte, 0, c.maxDecoded)
		}
		out, err := dec.DecodeAll(body, c.zscratch[:0])
		if err != nil {
			return dst, fmt.Errorf("bad zstd payload: %v", err)
		}
		return append(dst, out...), nil
	}
}

// growTo returns b with capacity for at least n bytes and length n.
func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}

func (c *compressor) zstdDecoder() (*zstd.Decoder, error) {
	c.zdecOnce.Do(func() {
		c.zdec, c.zdecErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(uint64(c.maxDecoded)),
			zstd.WithDecodeAllCapLimit(true))
	})
	return c.zdec, c.zdecErr
}

// compress returns alg-byte-prefixed compressed bytes of p, or nil when
// compression does not make the payload smaller. release must be called
// with the result once it has been written.
func (c *compressor) compress(alg uint32, p []byte) []byte {
	bp, _ := c.scratch.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	out := append((*bp)[:0], byte(alg))
	switch alg {
	case message.CompressS2:
		out = growTo(out, 1+s2.MaxEncodedLen(len(p)))
		enc := s2.Encode(out[1:], p)
		out = out[:1+len(enc)]
	case message.CompressZstd:
		c.zencOnce.Do(func() {
			c.zenc, c.zencErr = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		})
		if c.zencErr != nil {
			c.release(out)
			return nil
		}
		out = c.zenc.EncodeAll(p, out)
	default:
		c.release(out)
		return nil
	}
	if len(out) >= len(p) {
		c.release(out)
		return nil
	}
	return out
}

func (c *compressor) release(b []byte) {
	b = b[:0]
	c.scratch.Put(&b)
}

func (c *compressor) close() {
	if c.zdec != nil {
		c.zdec.Close()
	}
}

// compressing reports whether large data frames to the peer are
// compressed (negotiated, and configured on this side).
func (s *Session) compressing() bool {
	alg := s.cfg.Compress
	return alg != 0 && s.peer.Compression&alg != 0
}

// sendPayload writes a DATA or WS_MESSAGE frame, compressing it when the
// session is configured to and the peer accepts the algorithm.

func (s *Session) sendPayload(h frame.Header, p []byte) error {
	alg := s.cfg.Compress
	if alg != 0 && s.peer.Compression&alg != 0 && len(p) >= s.cfg.CompressMinSize {
		if out := s.comp.compress(alg, p); out != nil {
			h.Flags |= frame.FlagCompressed
			err := s.w.writeOne(frameSpec{h: h, payload: out}, false)
			s.comp.release(out)
			return err
		}
	}
	return s.w.writeOne(frameSpec{h: h, payload: p}, false)
}
