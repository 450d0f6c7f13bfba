package message

import (
	"fmt"
	"strings"
	"time"
)

// ProtocolVersion is the version announced in HELLO. Peers with a different
// version close the connection with VERSION_MISMATCH.
const ProtocolVersion = 1

// Roles of the two ends of a connection. The client opens odd stream ids,
// the server even ones.
const (
	RoleClient = 1
	RoleServer = 2
)

// Compression algorithms, as bits of Hello.Compression and as the first byte
// of a compressed payload.
const (
	CompressS2   = 1
	CompressZstd = 2
)

// Hello is the first frame each side sends.
type Hello struct {
	Version       uint32 // field 1
	Role          uint32 // field 2
	MaxFrameSize  uint32 // field 3: largest payload this side accepts
	InitialWindow uint32 // field 4: per-stream receive window this side grants
	MaxStreams    uint32 // field 5: concurrent peer-opened streams this side accepts
	Compression   uint32 // field 6: bit set of algorithms this side can decode
	Agent         []byte // field 7: implementation name and version, for logs
	// SharedBuffer (field 8) is 1 in a worker's HELLO on a data channel
	// when it took the shared body buffer sent with the host's HELLO
	// (SPEC.md §11.1).
	SharedBuffer uint32
}

// Append appends the encoding of h to b.
func (h *Hello) Append(b []byte) []byte {
	b = AppendVarint(b, 1, uint64(h.Version))
	b = AppendVarint(b, 2, uint64(h.Role))
	b = AppendVarint(b, 3, uint64(h.MaxFrameSize))
	b = AppendVarint(b, 4, uint64(h.InitialWindow))
	b = AppendVarint(b, 5, uint64(h.MaxStreams))
	b = AppendVarint(b, 6, uint64(h.Compression))
	b = AppendBytes(b, 7, h.Agent)
	if h.SharedBuffer != 0 {
		b = AppendVarint(b, 8, uint64(h.SharedBuffer))
	}
	return b
}

// Unmarshal decodes b into h. Byte fields alias b.
func (h *Hello) Unmarshal(b []byte) error {
	*h = Hello{}
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			h.Version, err = varint32(&f)
		case 2:
			h.Role, err = varint32(&f)
		case 3:
			h.MaxFrameSize, err = varint32(&f)
		case 4:
			h.InitialWindow, err = varint32(&f)
		case 5:
			h.MaxStreams, err = varint32(&f)
		case 6:
			h.Compression, err = varint32(&f)
		case 7:
			h.Agent, err = bytesField(&f)
		case 8:
			h.SharedBuffer, err = varint32(&f)
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

// HeaderField is one header as raw bytes, as ASGI carries it.
type HeaderField struct {
	Name, Value []byte
}

// appendHeaders encodes headers as a repeated bytes field alternating name
// and value, so a list of n headers is 2n occurrences of the field.
func appendHeaders(b []byte, field int, hs []HeaderField) []byte {
	for _, h := range hs {
		b = appendBytesAlways(b, field, h.Name)
		b = appendBytesAlways(b, field, h.Value)
	}
	return b
}

// headerDecoder collects alternating name/value occurrences.
type headerDecoder struct {
	pending []byte
	odd     bool
}

func (d *headerDecoder) add(hs []HeaderField, f *Field) ([]HeaderField, error) {
	v, err := bytesField(f)
	if err != nil {
		return hs, err
	}
	if !d.odd {
		d.pending, d.odd = v, true
		return hs, nil
	}
	d.odd = false
	if hs == nil {
		hs = make([]HeaderField, 0, 8) // typical requests carry a handful
	}
	return append(hs, HeaderField{Name: d.pending, Value: v}), nil
}

func (d *headerDecoder) finish() error {
	if d.odd {
		return malformed("header name without a value")
	}
	return nil
}

// Kinds of request.
const (
	KindHTTP      = 0
	KindWebSocket = 1
)

// RequestHead opens a stream (REQUEST frame). It carries everything an ASGI
// http or websocket scope needs.
type RequestHead struct {
	Kind         uint32        // field 1: KindHTTP or KindWebSocket
	HTTPVersion  []byte        // field 2: "1.0", "1.1" or "2"
	Method       []byte        // field 3: upper-case; empty for websocket
	Scheme       []byte        // field 4: http, https, ws or wss
	Path         []byte        // field 5: percent-decoded path, UTF-8
	RawPath      []byte        // field 6: path as received, without query
	QueryString  []byte        // field 7: without the leading '?'
	RootPath     []byte        // field 8: mount prefix the app is served under
	Headers      []HeaderField // field 9: repeated, alternating name, value
	ClientHost   []byte        // field 10
	ClientPort   uint32        // field 11
	ServerHost   []byte        // field 12
	ServerPort   uint32        // field 13
	Subprotocols [][]byte      // field 14: repeated, websocket only
}

// Append appends the encoding of h to b.
func (h *RequestHead) Append(b []byte) []byte {
	b = AppendVarint(b, 1, uint64(h.Kind))
	b = AppendBytes(b, 2, h.HTTPVersion)
	b = AppendBytes(b, 3, h.Method)
	b = AppendBytes(b, 4, h.Scheme)
	b = AppendBytes(b, 5, h.Path)
	b = AppendBytes(b, 6, h.RawPath)
	b = AppendBytes(b, 7, h.QueryString)
	b = AppendBytes(b, 8, h.RootPath)
	b = appendHeaders(b, 9, h.Headers)
	b = AppendBytes(b, 10, h.ClientHost)
	b = AppendVarint(b, 11, uint64(h.ClientPort))
	b = AppendBytes(b, 12, h.ServerHost)
	b = AppendVarint(b, 13, uint64(h.ServerPort))
	for _, p := range h.Subprotocols {
		b = appendBytesAlways(b, 14, p)
	}
	return b
}

// Unmarshal decodes b into h, reusing h's slices. Byte fields alias b.
func (h *RequestHead) Unmarshal(b []byte) error {
	hs, sp := h.Headers[:0], h.Subprotocols[:0]
	*h = RequestHead{}
	var hd headerDecoder
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			h.Kind, err = varint32(&f)
			if err == nil && h.Kind > KindWebSocket {
				err = malformed("unknown request kind %d", h.Kind)
			}
		case 2:
			h.HTTPVersion, err = bytesField(&f)
		case 3:
			h.Method, err = bytesField(&f)
		case 4:
			h.Scheme, err = bytesField(&f)
		case 5:
			h.Path, err = bytesField(&f)
		case 6:
			h.RawPath, err = bytesField(&f)
		case 7:
			h.QueryString, err = bytesField(&f)
		case 8:
			h.RootPath, err = bytesField(&f)
		case 9:
			hs, err = hd.add(hs, &f)
		case 10:
			h.ClientHost, err = bytesField(&f)
		case 11:
			h.ClientPort, err = port(&f)
		case 12:
			h.ServerHost, err = bytesField(&f)
		case 13:
			h.ServerPort, err = port(&f)
		case 14:
			var p []byte
			if p, err = bytesField(&f); err == nil {
				sp = append(sp, p)
			}
		}
		if err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	h.Headers, h.Subprotocols = hs, sp
	return hd.finish()
}

func port(f *Field) (uint32, error) {
	v, err := varint32(f)
	if err == nil && v > 65535 {
		err = malformed("port %d out of range", v)
	}
	return v, err
}

// ResponseHead starts the answer on a stream (RESPONSE frame). For a
// websocket, status 101 accepts the connection and Subprotocol names the
// chosen subprotocol; any other status denies it with an HTTP response.
type ResponseHead struct {
	Status      uint32        // field 1
	Headers     []HeaderField // field 2: repeated, alternating name, value
	Subprotocol []byte        // field 3
}

// Append appends the encoding of h to b.
func (h *ResponseHead) Append(b []byte) []byte {
	b = AppendVarint(b, 1, uint64(h.Status))
	b = appendHeaders(b, 2, h.Headers)
	return AppendBytes(b, 3, h.Subprotocol)
}

// Unmarshal decodes b into h, reusing h's header slice. Byte fields alias b.
func (h *ResponseHead) Unmarshal(b []byte) error {
	hs := h.Headers[:0]
	*h = ResponseHead{}
	var hd headerDecoder
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			h.Status, err = varint32(&f)
			if err == nil && (h.Status < 100 || h.Status > 999) {
				err = malformed("status %d out of range", h.Status)
			}
		case 2:
			hs, err = hd.add(hs, &f)
		case 3:
			h.Subprotocol, err = bytesField(&f)
		}
		if err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	if h.Status == 0 {
		return malformed("response without status")
	}
	h.Headers = hs
	return hd.finish()
}

// End closes the sender's side of a stream (END frame), optionally with
// trailers.
type End struct {
	Trailers []HeaderField // field 1: repeated, alternating name, value
}

// Append appends the encoding of e to b.
func (e *End) Append(b []byte) []byte { return appendHeaders(b, 1, e.Trailers) }

// Unmarshal decodes b into e. Byte fields alias b.
func (e *End) Unmarshal(b []byte) error {
	hs := e.Trailers[:0]
	var hd headerDecoder
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		if f.Num == 1 {
			var err error
			if hs, err = hd.add(hs, &f); err != nil {
				return err
			}
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	e.Trailers = hs
	return hd.finish()
}

// Reset abandons a stream (RESET frame).
type Reset struct {
	Code    uint32 // field 1
	Message []byte // field 2: human-readable reason
}

// Append appends the encoding of r to b.
func (r *Reset) Append(b []byte) []byte {
	b = AppendVarint(b, 1, uint64(r.Code))
	return AppendBytes(b, 2, r.Message)
}

// Unmarshal decodes b into r. Byte fields alias b.
func (r *Reset) Unmarshal(b []byte) error {
	*r = Reset{}
	return decodeCodeMessage(b, &r.Code, &r.Message)
}

// decodeCodeMessage decodes the shape shared by RESET and WS_CLOSE:
// field 1 a code, field 2 a text.
func decodeCodeMessage(b []byte, code *uint32, msg *[]byte) error {
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			*code, err = varint32(&f)
		case 2:
			*msg, err = bytesField(&f)
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

// GoAway announces that the sender accepts no streams beyond LastStreamID.
type GoAway struct {
	LastStreamID uint32 // field 1: highest peer-opened stream that will be processed
	Code         uint32 // field 2
	Message      []byte // field 3
}

// Append appends the encoding of g to b.
func (g *GoAway) Append(b []byte) []byte {
	b = AppendVarint(b, 1, uint64(g.LastStreamID))
	b = AppendVarint(b, 2, uint64(g.Code))
	return AppendBytes(b, 3, g.Message)
}

// Unmarshal decodes b into g. Byte fields alias b.
func (g *GoAway) Unmarshal(b []byte) error {
	*g = GoAway{}
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			g.LastStreamID, err = varint32(&f)
		case 2:
			g.Code, err = varint32(&f)
		case 3:
			g.Message, err = bytesField(&f)
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

// WSClose closes a websocket (WS_CLOSE frame). Sent before a RESPONSE, it
// denies the connection (the host answers 403).
type WSClose struct {
	Code   uint32 // field 1: websocket close code (1000 when absent)
	Reason []byte // field 2: UTF-8
}

// Append appends the encoding of c to b.
func (c *WSClose) Append(b []byte) []byte {
	b = AppendVarint(b, 1, uint64(c.Code))
	return AppendBytes(b, 2, c.Reason)
}

// Unmarshal decodes b into c. A missing code means 1000. Byte fields alias b.
func (c *WSClose) Unmarshal(b []byte) error {
	*c = WSClose{}
	if err := decodeCodeMessage(b, &c.Code, &c.Reason); err != nil {
		return err
	}
	if c.Code == 0 {
		c.Code = 1000
	}
	if c.Code > 4999 {
		return malformed("websocket close code %d out of range", c.Code)
	}
	return nil
}

// Log is one line of output from the guest (LOG frame).
type Log struct {
	Source   []byte // field 1: "stdout", "stderr" or "init"
	Origin   uint32 // field 2: worker or process number within the guest
	UnixNano uint64 // field 3: wall-clock time the line was read
	Line     []byte // field 4: the line, without its newline
}

// Append appends the encoding of l to b.
func (l *Log) Append(b []byte) []byte {
	b = AppendBytes(b, 1, l.Source)
	b = AppendVarint(b, 2, uint64(l.Origin))
	b = AppendVarint(b, 3, l.UnixNano)
	return AppendBytes(b, 4, l.Line)
}

// Unmarshal decodes b into l. Byte fields alias b.
func (l *Log) Unmarshal(b []byte) error {
	*l = Log{}
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			l.Source, err = bytesField(&f)
		case 2:
			l.Origin, err = varint32(&f)
		case 3:
			if err = wantWire(&f, wireVarint); err == nil {
				l.UnixNano = f.Varint
			}
		case 4:
			l.Line, err = bytesField(&f)
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

// TimelineEntry is one boot phase and when it ended, in nanoseconds of
// CLOCK_BOOTTIME (time since the kernel started).
type TimelineEntry struct {
	Phase    []byte // field 1
	BootNano uint64 // field 2
}

// FormatTimeline renders a boot timeline on one line, the first phase as
// time since boot and each later one as the time it took:
// "kernel 812ms, mounts +3ms, …".
func FormatTimeline(entries []TimelineEntry) string {
	var parts []string
	var prev uint64
	for i, e := range entries {
		if i == 0 {
			parts = append(parts, fmt.Sprintf("%s %s", e.Phase, time.Duration(e.BootNano).Round(time.Millisecond)))
		} else {
			parts = append(parts, fmt.Sprintf("%s +%s", e.Phase, time.Duration(e.BootNano-prev).Round(100*time.Microsecond)))
		}
		prev = e.BootNano
	}
	return strings.Join(parts, ", ")
}

// ConfigResult answers a CONFIG frame. Error is empty on success.
type ConfigResult struct {
	OK       bool            // field 1 (varint 1 when true)
	Phase    []byte          // field 2: phase that failed, e.g. "network"
	Field    []byte          // field 3: configuration field at fault, e.g. "network.ipv4.address"
	Message  []byte          // field 4: one-line summary for people
	Detail   []byte          // field 5: long detail (traceback, command output)
	Timeline []TimelineEntry // field 6: repeated nested {1: phase, 2: boot_nano}
}

// Append appends the encoding of r to b.
func (r *ConfigResult) Append(b []byte) []byte {
	if r.OK {
		b = AppendVarint(b, 1, 1)
	}
	b = AppendBytes(b, 2, r.Phase)
	b = AppendBytes(b, 3, r.Field)
	b = AppendBytes(b, 4, r.Message)
	b = AppendBytes(b, 5, r.Detail)
	var entry []byte
	for _, e := range r.Timeline {
		entry = AppendBytes(entry[:0], 1, e.Phase)
		entry = AppendVarint(entry, 2, e.BootNano)
		b = appendBytesAlways(b, 6, entry)
	}
	return b
}

// Unmarshal decodes b into r. Byte fields alias b.
func (r *ConfigResult) Unmarshal(b []byte) error {
	*r = ConfigResult{}
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			var v uint32
			if v, err = varint32(&f); err == nil {
				r.OK = v != 0
			}
		case 2:
			r.Phase, err = bytesField(&f)
		case 3:
			r.Field, err = bytesField(&f)
		case 4:
			r.Message, err = bytesField(&f)
		case 5:
			r.Detail, err = bytesField(&f)
		case 6:
			var e TimelineEntry
			var raw []byte
			if raw, err = bytesField(&f); err == nil {
				err = e.unmarshal(raw)
				r.Timeline = append(r.Timeline, e)
			}
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

func (e *TimelineEntry) unmarshal(b []byte) error {
	it := NewFields(b)
	var f Field
	for it.Next(&f) {
		var err error
		switch f.Num {
		case 1:
			e.Phase, err = bytesField(&f)
		case 2:
			if err = wantWire(&f, wireVarint); err == nil {
				e.BootNano = f.Varint
			}
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

// PeekRequestKind returns the kind of an encoded RequestHead without
// decoding the rest: relays need only that to choose how to carry a stream.
func PeekRequestKind(p []byte) (uint32, error) {
	it := NewFields(p)
	var f Field
	kind := uint64(KindHTTP)
	for it.Next(&f) {
		if f.Num == 1 && f.Wire == wireVarint {
			kind = f.Varint
		}
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	if kind > KindWebSocket {
		return 0, malformed("request kind %d", kind)
	}
	return uint32(kind), nil
}
