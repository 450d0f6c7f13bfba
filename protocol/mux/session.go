// Package mux runs the Ferry stream multiplexer over one reliable byte
// stream (vsock, virtio-serial, unix socket): the HELLO handshake, many
// concurrent streams with per-stream flow control, keepalive pings, graceful
// GOAWAY and optional compression of large data frames.
//
// A Session is created with Client or Server role; the client opens
// odd-numbered streams (requests from the host), the server even-numbered
// ones (guest API calls toward the host). Streams implement io.Reader and
// io.Writer for bodies. Everything is safe for concurrent use, and Close
// waits for every goroutine the session started. The wire format is
// specified in protocol/SPEC.md.
package mux

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/internal/lines"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// Defaults for Config fields left zero.
const (
	DefaultInitialWindow     = 256 << 10
	DefaultMaxStreams        = 1024
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultKeepaliveTimeout  = 45 * time.Second
	DefaultCompressMinSize   = 4 << 10
	// maxWindow is the largest a send window may grow (2^31-1).
	maxWindow = math.MaxInt32
	// wsFrameCost is charged against the window for every WS_MESSAGE frame in
	// addition to its payload, so that empty messages cannot pile up.
	wsFrameCost = 16
	// goAwayFlushTime is how long a session waits for a final GOAWAY to be
	// written before closing the connection.
	goAwayFlushTime = time.Second
)

// Config tunes a session. The zero value of every field but Role means its
// default.
type Config struct {
	// Role is message.RoleClient (the host side) or message.RoleServer.
	Role int
	// MaxFrameSize is the largest payload this side accepts.
	MaxFrameSize uint32
	// InitialWindow is the per-stream receive window granted to the peer.
	InitialWindow uint32
	// MaxStreams is how many peer-opened streams may be open at once.
	MaxStreams uint32
	// Decompress is the set of compression algorithms this side accepts
	// (message.CompressS2|CompressZstd by default). Set NoDecompress to
	// accept none.
	Decompress   uint32
	NoDecompress bool
	// Compress selects the algorithm used for outgoing data frames of at
	// least CompressMinSize bytes when the peer accepts it; 0 (the default)
	// sends everything uncompressed.
	Compress        uint32
	CompressMinSize int
	// KeepaliveInterval is how often to ping; negative disables pings.
	KeepaliveInterval time.Duration
	// KeepaliveTimeout closes the session when nothing was received for
	// that long; it only applies while pings are enabled.
	KeepaliveTimeout time.Duration
	// Agent names this implementation in HELLO, for the peer's logs.
	Agent string
	// Logger receives debug and warning logs; nil discards them.
	Logger *slog.Logger
	// OnControl receives CONFIG, CONFIG_RESULT and LOG frames. It runs on
	// the read loop: it must not block for long and must copy the payload
	// if it keeps it.
	OnControl func(t frame.Type, payload []byte)
	// Handler, when set, serves each stream the peer opens, called from
	// the read loop on a goroutine of its own (goroutines are reused);
	// Accept is then not used. It saves the hand-off to an accepting
	// goroutine and the stack growth of a fresh one, which matters for
	// short requests. The handler owns the stream and must end it.
	Handler func(*Stream)
}

func (c *Config) setDefaults() {
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = frame.DefaultMaxSize
	}
	c.MaxFrameSize = min(max(c.MaxFrameSize, frame.MinMaxSize), frame.MaxMaxSize)
	if c.InitialWindow == 0 {
		c.InitialWindow = DefaultInitialWindow
	}
	c.InitialWindow = min(c.InitialWindow, maxWindow)
	if c.MaxStreams == 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.Decompress == 0 && !c.NoDecompress {
		c.Decompress = message.CompressS2 | message.CompressZstd
	}
	if c.NoDecompress {
		c.Decompress = 0
	}
	if c.CompressMinSize <= 0 {
		c.CompressMinSize = DefaultCompressMinSize
	}
	if c.KeepaliveInterval == 0 {
		c.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if c.Agent == "" {
		c.Agent = "ferry-go"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Session is one multiplexed connection.
type Session struct {
	conn io.ReadWriteCloser
	cfg  Config
	log  *slog.Logger
	w    *writer
	comp *compressor

	peerReady chan struct{} // closed when the peer's HELLO arrived
	goneAway  chan struct{} // closed when the peer's GOAWAY arrived
	peer      message.Hello // valid after peerReady
	slots     chan struct{} // semaphore for streams we open (peer's MaxStreams)

	openMu sync.Mutex // orders stream ids on the wire
	mu     sync.Mutex
	// guarded by mu:
	streams      map[uint32]*Stream
	nextID       uint32 // next id we open
	lastPeerID   uint32 // highest id the peer opened
	peerOpen     uint32 // streams the peer opened that are still open
	localGoAway  bool
	pings        map[uint64]chan struct{}
	pingSeq      uint64
	idle         chan struct{} // signalled when streams becomes empty
	acceptCh     chan *Stream
	handlerIdle  chan *Stream // idle Config.Handler goroutines receive here
	closeErr     error
	goAwayRemote *ProtocolError // the peer's GOAWAY, once received

	// Owned by the read loop: streams whose RESPONSE head was applied
	// while more whole frames were already buffered (see holdHead).
	moreBuffered bool
	lateHeads    []*Stream

	lastRecv    atomic.Int64 // unix nanos of the last frame received
	closed      chan struct{}
	closeOnce   sync.Once
	releaseOnce sync.Once
	wg          sync.WaitGroup
}

// Client starts the host side of a session over conn.
func Client(conn io.ReadWriteCloser, cfg Config) *Session {
	cfg.Role = message.RoleClient
	return newSession(conn, cfg)
}

// Server starts the guest side of a session over conn.
func Server(conn io.ReadWriteCloser, cfg Config) *Session {
	cfg.Role = message.RoleServer
	return newSession(conn, cfg)
}

func newSession(conn io.ReadWriteCloser, cfg Config) *Session {
	cfg.setDefaults()
	s := &Session{
		conn:        conn,
		cfg:         cfg,
		log:         cfg.Logger,
		w:           newWriter(conn),
		comp:        newCompressor(cfg.MaxFrameSize),
		peerReady:   make(chan struct{}),
		goneAway:    make(chan struct{}),
		streams:     make(map[uint32]*Stream),
		pings:       make(map[uint64]chan struct{}),
		idle:        make(chan struct{}, 1),
		acceptCh:    make(chan *Stream, cfg.MaxStreams),
		handlerIdle: make(chan *Stream),
		closed:      make(chan struct{}),
	}
	if cfg.Role == message.RoleClient {
		s.nextID = 1
	} else {
		s.nextID = 2
	}
	s.lastRecv.Store(time.Now().UnixNano())
	hello := message.Hello{
		Version:       message.ProtocolVersion,
		Role:          uint32(cfg.Role),
		MaxFrameSize:  cfg.MaxFrameSize,
		InitialWindow: cfg.InitialWindow,
		MaxStreams:    cfg.MaxStreams,
		Compression:   cfg.Decompress,
		Agent:         []byte(cfg.Agent),
	}
	// HELLO is queued first and written by the background flusher, so that
	// both sides can send theirs without waiting for each other.
	_ = s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeHello}, enc: &hello}, true)
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.w.run(s.closed) }()
	go func() { defer s.wg.Done(); s.readLoop() }()
	if cfg.KeepaliveInterval > 0 {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.keepalive() }()
	}
	return s
}

// Handshake waits until the peer's HELLO has arrived and returns it.
func (s *Session) Handshake(ctx context.Context) (message.Hello, error) {
	select {
	case <-s.peerReady: // the usual case, without waiting
		return s.peer, nil
	default:
	}
	select {
	case <-s.peerReady:
		return s.peer, nil
	case <-s.closed:
		return message.Hello{}, s.Err()
	case <-ctx.Done():
		return message.Hello{}, ctx.Err()
	}
}

// Done is closed when the session has closed.
func (s *Session) Done() <-chan struct{} { return s.closed }

// GoAwayReceived is closed when the peer has sent GOAWAY.
func (s *Session) GoAwayReceived() <-chan struct{} { return s.goneAway }

// Err returns why the session closed, or nil while it is open.
func (s *Session) Err() error {
	select {
	case <-s.closed:
	default:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeErr
}

// NumStreams returns how many streams are open.
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// Open opens a stream by sending its REQUEST head, followed in the same
// write by as much of body as the send window allows (the rest is written
// before Open returns). With endStream the request ends after body. It waits
// for the handshake and, when the peer's MaxStreams are all in use, for a
// stream to finish. A ctx that has ended already opens nothing (the peer
// never sees the request).
func (s *Session) Open(ctx context.Context, head *message.RequestHead, body []byte, endStream bool) (*Stream, error) {
	return s.open(ctx, frameSpec{h: frame.Header{Type: frame.TypeRequest}, enc: head}, body, endStream)
}

func (s *Session) open(ctx context.Context, head frameSpec, body []byte, endStream bool) (*Stream, error) {
	// The waits below take what is ready before they look at ctx: one
	// that has ended must not send a request nobody waits for.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := s.Handshake(ctx); err != nil {
		return nil, err
	}
	if !s.takeSlot() {
		select {
		case s.slots <- struct{}{}:
		case <-s.closed:
			return nil, s.Err()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.openMu.Lock()
	s.mu.Lock()
	var err error
	switch {
	case s.closeErr != nil:
		err = s.closeErr
	case s.goAwayRemote != nil:
		err = ErrGoAway
	case s.nextID > math.MaxUint32-2:
		err = ErrStreamIDsExhausted
	}
	if err != nil {
		s.mu.Unlock()
		s.openMu.Unlock()
		<-s.slots
		return nil, err
	}
	st := newStream(s, s.nextID, true)
	s.nextID += 2
	s.streams[st.id] = st
	s.mu.Unlock()
	// Stream ids must reach the wire in increasing order: the REQUEST is
	// queued before openMu is released.
	head.h.StreamID = st.id
	rest, err := st.writeHead(head, body, endStream)
	s.openMu.Unlock()
	if err == nil && len(rest) > 0 {
		_, err = st.writeData(rest, endStream)
	}
	if err != nil {
		st.fail(err)
		return nil, err
	}
	return st, nil
}

// takeSlot takes a slot for a new stream if one is free at once (the
// usual case): a select of one case costs a fraction of one that waits on
// three channels.
func (s *Session) takeSlot() bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// Accept waits for the next stream the peer opens.
func (s *Session) Accept(ctx context.Context) (*Stream, error) {
	select {
	case st := <-s.acceptCh:
		return st, nil
	case <-s.closed:
		// Streams that arrived before the close are still delivered.
		select {
		case st := <-s.acceptCh:
			return st, nil
		default:
		}
		return nil, s.Err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// SendControl sends a connection-level CONFIG, CONFIG_RESULT or LOG frame.
func (s *Session) SendControl(t frame.Type, payload []byte) error {
	if !t.ConnectionLevel() || t == frame.TypeHello || t == frame.TypePing || t == frame.TypeGoAway {
		return errors.New("mux: SendControl takes CONFIG, CONFIG_RESULT or LOG")
	}
	if uint32(len(payload)) > s.peerMaxFrame() {
		return frame.Errorf(frame.CodeFrameSize, "%s payload of %d bytes exceeds the peer's maximum %d", t, len(payload), s.peerMaxFrame())
	}
	return s.w.writeOne(frameSpec{h: frame.Header{Type: t}, payload: payload}, false)
}

// SendControlMessage encodes m as the payload of a connection-level frame.
func (s *Session) SendControlMessage(t frame.Type, m appender) error {
	return s.SendControl(t, m.Append(nil))
}

// peerMaxFrame is the largest payload we may send.
func (s *Session) peerMaxFrame() uint32 {
	select {
	case <-s.peerReady:
		return s.peer.MaxFrameSize
	default:
		return frame.MinMaxSize
	}
}

// Ping sends a PING and waits for its acknowledgement, returning the round
// trip time.
func (s *Session) Ping(ctx context.Context) (time.Duration, error) {
	ch := make(chan struct{})
	s.mu.Lock()
	if s.closeErr != nil {
		s.mu.Unlock()
		return 0, s.closeErr
	}
	s.pingSeq++
	id := s.pingSeq
	s.pings[id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pings, id)
		s.mu.Unlock()
	}()
	start := time.Now()
	if err := s.sendPing(id, false); err != nil {
		return 0, err
	}
	select {
	case <-ch:
		return time.Since(start), nil
	case <-s.closed:
		return 0, s.Err()
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (s *Session) sendPing(data uint64, ack bool) error {
	var p [8]byte
	binary.BigEndian.PutUint64(p[:], data)
	var flags frame.Flags
	if ack {
		flags = frame.FlagAck
	}
	return s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypePing, Flags: flags}, payload: p[:]}, true)
}

// GoAway tells the peer that no stream it opens from now on will be
// processed. Streams already open continue.
func (s *Session) GoAway(code uint32, reason string) error {
	s.mu.Lock()
	if s.localGoAway {
		s.mu.Unlock()
		return nil
	}
	s.localGoAway = true
	g := message.GoAway{LastStreamID: s.lastPeerID, Code: code, Message: []byte(reason)}
	s.mu.Unlock()
	return s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeGoAway}, enc: &g}, false)
}

// Shutdown drains the session gracefully: it sends GOAWAY, waits until every
// open stream has finished (or ctx ends), then closes.
func (s *Session) Shutdown(ctx context.Context) error {
	if err := s.GoAway(frame.CodeNoError, "shutting down"); err != nil {
		s.Close()
		return err
	}
	for {
		if s.NumStreams() == 0 {
			break
		}
		select {
		case <-s.idle:
		case <-s.closed:
			return s.Close()
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
	s.w.waitIdle(goAwayFlushTime)
	return s.Close()
}

// Close closes the session and its connection immediately. Open streams fail
// with ErrSessionClosed. It waits for the session's goroutines to exit.
func (s *Session) Close() error {
	s.shutdown(ErrSessionClosed)
	s.wg.Wait()
	s.releaseOnce.Do(s.comp.close)
	return nil
}

// shutdown closes the session without waiting for its goroutines (it may be
// called from them).
func (s *Session) shutdown(reason error) {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closeErr = reason
		streams := make([]*Stream, 0, len(s.streams))
		for _, st := range s.streams {
			streams = append(streams, st)
		}
		s.mu.Unlock()
		s.w.fail(reason)
		_ = s.conn.Close()
		close(s.closed)
		for _, st := range streams {
			st.fail(reason)
		}
	})
}

// protocolError sends GOAWAY with the reason, then closes the session.
func (s *Session) protocolError(err *frame.Error) {
	s.log.Warn("ferry protocol error, closing session", "code", frame.CodeName(err.Code), "reason", err.Reason)
	s.mu.Lock()
	g := message.GoAway{LastStreamID: s.lastPeerID, Code: err.Code, Message: []byte(err.Reason)}
	s.mu.Unlock()
	_ = s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeGoAway}, enc: &g}, true)
	s.w.waitIdle(goAwayFlushTime)
	s.shutdown(&ProtocolError{Code: err.Code, Reason: err.Reason})
}

// keepalive pings the peer and closes the session when it goes silent.
func (s *Session) keepalive() {
	t := time.NewTicker(s.cfg.KeepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case now := <-t.C:
			silent := now.Sub(time.Unix(0, s.lastRecv.Load()))
			if silent > s.cfg.KeepaliveTimeout {
				s.log.Warn("ferry peer unresponsive, closing session", "silent", silent)
				s.shutdown(ErrKeepaliveTimeout)
				return
			}
			if silent >= s.cfg.KeepaliveInterval {
				_ = s.sendPing(0, false)
			}
		}
	}
}

// removeStream forgets a finished stream and frees its slot.
func (s *Session) removeStream(st *Stream) {
	s.mu.Lock()
	if s.streams[st.id] != st {
		s.mu.Unlock()
		return
	}
	delete(s.streams, st.id)
	if st.local {
		<-s.slots
	} else {
		s.peerOpen--
	}
	empty := len(s.streams) == 0
	s.mu.Unlock()
	if empty {
		select {
		case s.idle <- struct{}{}:
		default:
		}
	}
}

// maxReasonSize bounds the human-readable message of a RESET: reasons may
// quote what a peer sent (a request target, an error), and must never make
// a frame the peer refuses.
const maxReasonSize = 1 << 10

// sendReset writes a RESET for a stream id; a message longer than
// maxReasonSize is cut between characters and ends with "...".
func (s *Session) sendReset(id, code uint32, msg string) {
	msg = lines.Shorten(msg, maxReasonSize-len("..."))
	r := message.Reset{Code: code, Message: []byte(msg)}
	_ = s.w.writeOne(frameSpec{h: frame.Header{Type: frame.TypeReset, StreamID: id}, enc: &r}, true)
}

// readLoop reads and dispatches frames until the connection ends.
func (s *Session) readLoop() {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("ferry read loop panic", "panic", r)
			s.shutdown(&ProtocolError{Code: frame.CodeInternal, Reason: "internal error in read loop"})
		}
	}()
	br := bufio.NewReaderSize(s.conn, 64<<10)
	fr := frame.NewReader(br, s.cfg.MaxFrameSize)
	defer s.wakeLateHeads()
	for {
		if !s.moreBuffered {
			// The next read may wait for the peer: whoever waits for a
			// head applied from the last read must not wait with it.
			s.wakeLateHeads()
		}
		h, err := fr.ReadHeader()
		var payload, target []byte
		var direct *Stream
		if err == nil {
			if direct, target = s.directTarget(h); target != nil {
				err = fr.ReadPayloadInto(target)
			} else {
				payload, err = fr.ReadPayload(h)
			}
		}
		if err != nil {
			var perr *frame.Error
			switch {
			case errors.As(err, &perr):
				s.protocolError(perr)
			case err == io.EOF:
				s.shutdown(s.eofReason())
			case errors.Is(err, frame.ErrTruncated):
				s.shutdown(&ProtocolError{Code: frame.CodeProtocol, Reason: "connection ended inside a frame"})
			default:
				s.shutdown(err)
			}
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		s.moreBuffered = wholeFrameBuffered(br) && len(s.lateHeads) < maxLateHeads
		if target != nil {
			direct.receiveDirect(h, target)
			continue
		}
		if perr := s.handleFrame(h, payload); perr != nil {
			s.protocolError(perr)
			return
		}
	}
}

// directTarget returns the stream h is for and where the read loop reads
// its payload, when that may go straight into the stream's buffer: h is
// an uncompressed DATA frame of at least directReadMin bytes, the session
// is past its HELLO, the stream is open and can take it
// (Stream.receiveTarget). Otherwise the target is nil and the frame goes
// through handleFrame.
func (s *Session) directTarget(h frame.Header) (*Stream, []byte) {
	if h.Type != frame.TypeData || h.Has(frame.FlagCompressed) || h.Length < directReadMin {
		return nil, nil
	}
	select {
	case <-s.peerReady:
	default:
		return nil, nil
	}
	s.mu.Lock()
	st := s.streams[h.StreamID]
	s.mu.Unlock()
	if st == nil {
		return nil, nil
	}
	return st, st.receiveTarget(h)
}

// maxLateHeads bounds how many heads' wake-ups one read may hold back.
const maxLateHeads = 64

// wholeFrameBuffered reports whether br already holds a whole frame, which
// the read loop can apply without reading the connection.
func wholeFrameBuffered(br *bufio.Reader) bool {
	if br.Buffered() < frame.HeaderSize {
		return false
	}
	hdr, err := br.Peek(frame.HeaderSize)
	if err != nil {
		return false
	}
	return uint64(br.Buffered()) >= uint64(frame.HeaderSize)+uint64(frame.ParseHeader(hdr).Length)
}

// holdHead reports whether a RESPONSE head being applied must wait for
// the frames read with it: when more whole frames were already buffered,
// its reader sees it only once they are applied too, so that it sees the
// body and END that the peer sent in the same write (a relay then answers
// a whole small response with a Content-Length every time, not only when
// it happened to lose the race with the read loop). The head is held, not
// only its wake-up: a reader that comes to ReadResponse without waiting
// (it was still on its way when the head was applied) must not see it
// early either. The caller holds st.mu and sets st.headHeld with the head.
func (s *Session) holdHead() bool { return s.moreBuffered }

// holdLater queues a held head for wakeLateHeads.
func (s *Session) holdLater(st *Stream) { s.lateHeads = append(s.lateHeads, st) }

// wakeLateHeads releases the heads holdHead held back and wakes their
// readers.
func (s *Session) wakeLateHeads() {
	for i, st := range s.lateHeads {
		st.mu.Lock()
		st.headHeld = false
		st.mu.Unlock()
		st.signal(&st.readable)
		s.lateHeads[i] = nil
	}
	s.lateHeads = s.lateHeads[:0]
}

// eofReason explains a clean end of the connection.
func (s *Session) eofReason() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.goAwayRemote != nil {
		return s.goAwayRemote
	}
	return ErrSessionClosed
}

// handleFrame applies one frame; a non-nil result is a connection error.
func (s *Session) handleFrame(h frame.Header, p []byte) *frame.Error {
	select {
	case <-s.peerReady:
	default:
		if h.Type != frame.TypeHello {
			return frame.Errorf(frame.CodeProtocol, "first frame must be HELLO, got %s", h.Type)
		}
		return s.handleHello(p)
	}
	switch h.Type {
	case frame.TypeHello:
		return frame.Errorf(frame.CodeProtocol, "second HELLO")
	case frame.TypePing:
		if h.Has(frame.FlagAck) {
			id := binary.BigEndian.Uint64(p)
			s.mu.Lock()
			if ch, ok := s.pings[id]; ok {
				close(ch)
				delete(s.pings, id)
			}
			s.mu.Unlock()
			return nil
		}
		_ = s.sendPing(binary.BigEndian.Uint64(p), true)
		return nil
	case frame.TypeGoAway:
		return s.handleGoAway(p)
	case frame.TypeConfig, frame.TypeConfigResult, frame.TypeLog:
		if s.cfg.OnControl != nil {
			s.cfg.OnControl(h.Type, p)
		}
		return nil
	case frame.TypeRequest:
		return s.handleRequest(h, p)
	case frame.TypeDataShared:
		// Only a host that sent a shared buffer takes it (SPEC.md §11.1);
		// a session never sends one.
		return frame.Errorf(frame.CodeProtocol, "DATA_SHARED, but no shared buffer was given")
	}
	s.mu.Lock()
	st := s.streams[h.StreamID]
	s.mu.Unlock()
	if st == nil {
		return s.handleUnknownStream(h)
	}
	return st.handleFrame(h, p)
}

func (s *Session) handleHello(p []byte) *frame.Error {
	var hello message.Hello
	if err := hello.Unmarshal(p); err != nil {
		return frame.Errorf(frame.CodeProtocol, "bad HELLO: %v", err)
	}
	switch {
	case hello.Version != message.ProtocolVersion:
		return frame.Errorf(frame.CodeVersion, "peer speaks protocol version %d, this side %d", hello.Version, message.ProtocolVersion)
	case hello.Role == uint32(s.cfg.Role) || (hello.Role != message.RoleClient && hello.Role != message.RoleServer):
		return frame.Errorf(frame.CodeProtocol, "peer role %d conflicts with this side's role %d", hello.Role, s.cfg.Role)
	case hello.MaxFrameSize < frame.MinMaxSize || hello.MaxFrameSize > frame.MaxMaxSize:
		return frame.Errorf(frame.CodeProtocol, "peer max frame size %d outside [%d, %d]", hello.MaxFrameSize, frame.MinMaxSize, frame.MaxMaxSize)
	case hello.InitialWindow == 0 || hello.InitialWindow > maxWindow:
		return frame.Errorf(frame.CodeFlowControl, "peer initial window %d outside [1, %d]", hello.InitialWindow, maxWindow)
	case hello.MaxStreams == 0:
		return frame.Errorf(frame.CodeProtocol, "peer accepts no streams")
	}
	hello.Agent = append([]byte(nil), hello.Agent...)
	s.peer = hello
	s.slots = make(chan struct{}, min(hello.MaxStreams, 1<<20))
	s.log.Debug("ferry session established", "peer_agent", string(hello.Agent),
		"peer_max_frame", hello.MaxFrameSize, "peer_window", hello.InitialWindow, "peer_max_streams", hello.MaxStreams)
	close(s.peerReady)
	return nil
}

func (s *Session) handleGoAway(p []byte) *frame.Error {
	var g message.GoAway
	if err := g.Unmarshal(p); err != nil {
		return frame.Errorf(frame.CodeProtocol, "bad GOAWAY: %v", err)
	}
	remote := &ProtocolError{Code: g.Code, Reason: string(g.Message), Remote: true}
	s.mu.Lock()
	if s.goAwayRemote == nil {
		close(s.goneAway)
	}
	s.goAwayRemote = remote
	var refused []*Stream
	for id, st := range s.streams {
		if st.local && id > g.LastStreamID {
			refused = append(refused, st)
		}
	}
	s.mu.Unlock()
	s.log.Debug("ferry peer going away", "last_stream", g.LastStreamID, "code", frame.CodeName(g.Code), "reason", remote.Reason)
	for _, st := range refused {
		st.fail(&StreamError{StreamID: st.id, Code: frame.CodeRefusedStream, Message: "peer going away before processing", Remote: true})
	}
	return nil
}

// peerParity reports whether id belongs to streams the peer opens.
func (s *Session) peerParity(id uint32) bool {
	return (id%2 == 1) == (s.cfg.Role == message.RoleServer)
}

func (s *Session) handleRequest(h frame.Header, p []byte) *frame.Error {
	if !s.peerParity(h.StreamID) {
		return frame.Errorf(frame.CodeProtocol, "REQUEST on stream %d, which is this side's to open", h.StreamID)
	}
	s.mu.Lock()
	if h.StreamID <= s.lastPeerID {
		s.mu.Unlock()
		return frame.Errorf(frame.CodeProtocol, "REQUEST reuses stream id %d (last opened %d)", h.StreamID, s.lastPeerID)
	}
	s.lastPeerID = h.StreamID
	refuse := ""
	switch {
	case s.localGoAway:
		refuse = "going away"
	case s.peerOpen >= s.cfg.MaxStreams:
		refuse = "too many concurrent streams"
	case s.closeErr != nil:
		refuse = "session closing"
	}
	if refuse != "" {
		s.mu.Unlock()
		s.sendReset(h.StreamID, frame.CodeRefusedStream, refuse)
		return nil
	}
	st := newStream(s, h.StreamID, false)
	st.setHead(p)
	st.headReceived = true
	st.remoteFin = h.Has(frame.FlagFin)
	s.streams[st.id] = st
	s.peerOpen++
	s.mu.Unlock()
	if s.cfg.Handler != nil {
		s.dispatch(st)
		return nil
	}
	s.acceptCh <- st // never blocks: capacity is MaxStreams
	return nil
}

// handleUnknownStream deals with a frame for a stream that is not open.
func (s *Session) handleUnknownStream(h frame.Header) *frame.Error {
	s.mu.Lock()
	idle := (s.peerParity(h.StreamID) && h.StreamID > s.lastPeerID) ||
		(!s.peerParity(h.StreamID) && h.StreamID >= s.nextID)
	s.mu.Unlock()
	if idle {
		return frame.Errorf(frame.CodeProtocol, "%s on stream %d, which was never opened", h.Type, h.StreamID)
	}
	switch h.Type {
	case frame.TypeReset, frame.TypeWindowUpdate:
		// Legitimately in flight when a stream closes; nothing to do.
	default:
		s.sendReset(h.StreamID, frame.CodeStreamClosed, h.Type.String()+" on closed stream")
	}
	return nil
}
