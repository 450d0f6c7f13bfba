package alephcompat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Shape limits of a document from the supervisor, checked before it is
// decoded. The msgpack library trusts a document's declared lengths: it
// allocates an array's elements before reading them (a 5-byte array
// header asking for 2^32 elements ends the process out of memory) and
// skips unknown fields by recursion (ten million nested arrays overflow
// the stack), and neither can be recovered from. The reference's
// documents are at most four levels deep with a few dozen entries each.
const (
	// maxDepth bounds how deeply arrays and maps nest.
	maxDepth = 32
	// maxItems bounds the entries of one array or map.
	maxItems = 1 << 16
)

// errShape is wrapped by the errors of documents readDoc refuses.
var errShape = errors.New("malformed msgpack document")

// readDoc reads one whole msgpack document from r, at most limit bytes,
// and returns its bytes once its shape is checked: well formed, nesting
// at most maxDepth levels, with at most maxItems entries in each array
// or map. Memory grows with the bytes that arrive, never with the
// lengths the document declares, and nothing past the document is read.
func readDoc(r *bufio.Reader, limit int) ([]byte, error) {
	var buf bytes.Buffer
	take := func(n int) ([]byte, error) {
		if n > limit-buf.Len() {
			return nil, fmt.Errorf("%w: longer than %d bytes", errShape, limit)
		}
		start := buf.Len()
		if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
			return nil, fmt.Errorf("document cut short after %d bytes: %w", buf.Len(), noEOF(err))
		}
		return buf.Bytes()[start:], nil
	}
	left := []int{1} // entries still to read at each open level
	for len(left) > 0 {
		if left[len(left)-1] == 0 {
			left = left[:len(left)-1]
			continue
		}
		left[len(left)-1]--
		c, err := take(1)
		if err != nil {
			return nil, err
		}
		sizeLen, fixed, items, payload := shape(c[0])
		if sizeLen < 0 {
			return nil, fmt.Errorf("%w: byte 0x%02x at offset %d begins no value", errShape, c[0], buf.Len()-1)
		}
		if sizeLen > 0 {
			b, err := take(sizeLen)
			if err != nil {
				return nil, err
			}
			var n uint64
			for _, x := range b {
				n = n<<8 | uint64(x)
			}
			if n > uint64(limit) {
				return nil, fmt.Errorf("%w: a length of %d at offset %d exceeds %d bytes", errShape, n, buf.Len()-sizeLen-1, limit)
			}
			if items > 0 {
				if n > maxItems {
					return nil, fmt.Errorf("%w: an array or map of %d entries (at most %d)", errShape, n, maxItems)
				}
				items *= int(n)
			} else {
				payload = int(n)
			}
		}
		if _, err := take(fixed + payload); err != nil {
			return nil, err
		}
		if items > 0 {
			if len(left) > maxDepth {
				return nil, fmt.Errorf("%w: nested more than %d levels deep", errShape, maxDepth)
			}
			left = append(left, items)
		}
	}
	return buf.Bytes(), nil
}

// shape says how the msgpack value beginning with c goes on: the bytes
// of its length field (-1: c begins no value), the bytes it always has
// after that, the entries it holds per unit of its length (2 for a map)
// or, for a fixed-size container, its entries, and its payload's size
// when its length field does not give it.
func shape(c byte) (sizeLen, fixed, items, payload int) {
	switch {
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3: // fixints, nil, booleans
		return 0, 0, 0, 0
	case c <= 0x8f: // fixmap
		return 0, 0, 2 * int(c&0x0f), 0
	case c <= 0x9f: // fixarray
		return 0, 0, int(c & 0x0f), 0
	case c <= 0xbf: // fixstr
		return 0, 0, 0, int(c & 0x1f)
	}
	switch c {
	case 0xc4, 0xd9: // bin 8, str 8
		return 1, 0, 0, 0
	case 0xc5, 0xda: // bin 16, str 16
		return 2, 0, 0, 0
	case 0xc6, 0xdb: // bin 32, str 32
		return 4, 0, 0, 0
	case 0xc7: // ext 8: length, type, data
		return 1, 1, 0, 0
	case 0xc8:
		return 2, 1, 0, 0
	case 0xc9:
		return 4, 1, 0, 0
	case 0xcc, 0xd0: // uint 8, int 8
		return 0, 1, 0, 0
	case 0xcd, 0xd1:
		return 0, 2, 0, 0
	case 0xca, 0xce, 0xd2: // float 32, uint 32, int 32
		return 0, 4, 0, 0
	case 0xcb, 0xcf, 0xd3:
		return 0, 8, 0, 0
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1 to 16: type and data
		return 0, 1 + 1<<(c-0xd4), 0, 0
	case 0xdc: // array 16
		return 2, 0, 1, 0
	case 0xdd:
		return 4, 0, 1, 0
	case 0xde: // map 16
		return 2, 0, 2, 0
	case 0xdf:
		return 4, 0, 2, 0
	}
	return -1, 0, 0, 0 // 0xc1, never used
}

// noEOF turns a clean end of stream inside a document into an unexpected
// one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
