package alephcompat

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/transport"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// Limits of what the supervisor may send.
const (
	// maxLengthLine is the length line's longest form, newline included
	// (init1.py receive_data_length reads at most 9 bytes).
	maxLengthLine = 9
	// maxConfig bounds the configuration document (code inside it
	// included): what eight digits can say.
	maxConfig = 99_999_999
	// maxRun bounds a run request; the reference reads at most 10 MB in
	// one read, Ferry reads the whole document up to this.
	maxRun = 256 << 20
	// maxResponse bounds a response body held to be sent in one document.
	maxResponse = 256 << 20
)

// Options say how a Server reaches the rest of init.
type Options struct {
	// Configure validates and applies a Ferry configuration document
	// (JSON, contract.Config) through init's configure path.
	Configure func(ctx context.Context, doc []byte) *contract.ConfigError
	// Serve serves one request stream with the configured program, as a
	// stream from the host would be.
	Serve func(ctx context.Context, st *mux.Stream)
	// Halt stops the program within its grace period and unmounts its
	// volumes.
	Halt func() error
	// Shutdown asks init to finish stopping (then it reboots, as PID 1).
	Shutdown func(reason string)
	// Scratch is where code and input data sent inside the configuration
	// are written.
	Scratch string
	// DataDir is the program's /data, zipped into output_data after each
	// request when it holds anything (init1.py run_python_code_http).
	DataDir string
	// APISocket is the guest API bridge's socket, told to the program.
	APISocket string
	// Shell enables `!command` instructions (init1.py runs them with a
	// shell); off, they are refused.
	Shell bool
	// Agent names init in its loop-back session.
	Agent string
	// Idle bounds the silence while an instruction arrives: a connection
	// that stalls before its instruction is whole is closed then
	// (transport.SniffTimeout when 0). It does not apply once a run
	// request is read and its answer awaited.
	Idle time.Duration
	Log  *slog.Logger
}

// Server serves the reference protocol's connections.
type Server struct {
	opt  Options
	log  *slog.Logger
	loop *mux.Session // client end of the loop-back session to Serve

	mu        sync.Mutex
	iface     string // the configured interface; empty until configured
	haltOnce  sync.Once
	closeLoop func()
}

// New starts a server: a loop-back Ferry session over a socket pair, whose
// server end hands each stream to opt.Serve.
func New(opt Options) (*Server, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop-back session: %w", err)
	}
	ends := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "aleph-loop")
		ends[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			if i == 1 {
				ends[0].Close()
			}
			return nil, fmt.Errorf("loop-back session: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := mux.Server(ends[0], mux.Config{
		Agent:             opt.Agent,
		MaxStreams:        contract.MaxStreams,
		KeepaliveInterval: -1,
		Handler:           func(st *mux.Stream) { opt.Serve(ctx, st) },
	})
	cli := mux.Client(ends[1], mux.Config{Agent: opt.Agent, KeepaliveInterval: -1})
	s := &Server{opt: opt, log: opt.Log.With("part", "aleph"), loop: cli}
	s.closeLoop = func() {
		cancel()
		cli.Close()
		srv.Close()
	}
	return s, nil
}

// Close ends the loop-back session.
func (s *Server) Close() { s.closeLoop() }

// ServeConn serves one connection of the supervisor. Its first bytes say
// what it carries: a digit begins the configuration's length line,
// "halt" asks to stop, "!" a shell command, and a msgpack map is a run
// request.
func (s *Server) ServeConn(ctx context.Context, conn io.ReadWriteCloser) {
	defer conn.Close()
	// As init's own sessions do (service.safely): a panic in what serves
	// the connection (the configure path is init's) must not end PID 1.
	// The connection closes unanswered, which the supervisor reports.
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("recovered from a panic serving the supervisor", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	idle := &idleReader{r: conn, timeout: cmp.Or(s.opt.Idle, transport.SniffTimeout)}
	if d, ok := conn.(interface{ SetReadDeadline(time.Time) error }); ok {
		idle.deadline = d.SetReadDeadline
	}
	br := bufio.NewReaderSize(idle, 64<<10)
	first, err := br.Peek(1)
	if err != nil {
		return
	}
	switch b := first[0]; {
	case b >= '0' && b <= '9':
		s.configure(ctx, br, conn)
	case b == 'h':
		if word, _ := br.Peek(4); string(word) == "halt" {
			s.halt(conn)
			return
		}
		s.refuse(conn, "unknown instruction")
	case b == '!':
		s.shell(ctx, br, conn)
	case isMap(b):
		s.run(ctx, br, conn, idle.stop)
	default:
		s.refuse(conn, fmt.Sprintf("unknown instruction (first byte 0x%02x)", b))
	}
}

// isMap reports whether b begins a msgpack map (fixmap, map 16, map 32).
func isMap(b byte) bool { return b&0xf0 == 0x80 || b == 0xde || b == 0xdf }

// refuse answers an instruction init does not serve with the error
// document of a failed run, which the supervisor shows as a 500.
func (s *Server) refuse(w io.Writer, msg string) {
	s.log.Warn("refusing an instruction from the supervisor", "reason", msg)
	writeDoc(w, &runError{Error: msg, Traceback: msg})
}

// writeDoc writes v as one msgpack document in one write.
func writeDoc(w io.Writer, v any) error {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// configure reads the length line and the document, applies it and
// answers {success, error, traceback}.
func (s *Server) configure(ctx context.Context, br *bufio.Reader, w io.Writer) {
	reply := configReply{Success: true}
	if cerr := s.applyConfig(ctx, br); cerr != nil {
		reply = configReply{Error: cerr.Error(), Traceback: cerr.Detail}
		if reply.Traceback == "" {
			reply.Traceback = cerr.Error()
		}
		s.log.Warn("configuration from the supervisor failed", "err", cerr)
	}
	if err := writeDoc(w, &reply); err != nil {
		s.log.Warn("cannot answer the configuration", "err", err)
	}
}

func (s *Server) applyConfig(ctx context.Context, br *bufio.Reader) *contract.ConfigError {
	invalid := func(err error) *contract.ConfigError {
		return contract.NewConfigError(contract.PhaseValidate, "", err)
	}
	n, err := readLength(br)
	if err != nil {
		return invalid(err)
	}
	doc, err := readDoc(br, n)
	if err != nil {
		return invalid(fmt.Errorf("configuration: %w", err))
	}
	if len(doc) != n {
		return invalid(fmt.Errorf("configuration: the document is %d bytes, the length line says %d", len(doc), n))
	}
	var d configDoc
	if err := msgpack.Unmarshal(doc, &d); err != nil {
		return invalid(fmt.Errorf("configuration is not a msgpack document of the reference's fields: %w", err))
	}
	doc = nil
	t, err := translate(&d, s.opt.Scratch, s.opt.APISocket)
	if err != nil {
		return invalid(err)
	}
	js, err := json.Marshal(t.config)
	if err != nil {
		return invalid(err)
	}
	s.log.Info("configuring from the supervisor", "program", t.config.ProgramID, "interface", t.config.Interface, "encoding", t.config.Code.Encoding)
	if cerr := s.opt.Configure(ctx, js); cerr != nil {
		return cerr
	}
	s.mu.Lock()
	s.iface = t.config.Interface
	s.mu.Unlock()
	return nil
}

// readLength reads the configuration's length line: decimal digits and
// a newline, at most maxLengthLine bytes.
func readLength(br *bufio.Reader) (int, error) {
	var line []byte
	for len(line) < maxLengthLine {
		b, err := br.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("reading the length line: %w", err)
		}
		if b == '\n' {
			break
		}
		line = append(line, b)
	}
	n, err := strconv.Atoi(string(line))
	if err != nil || n <= 0 || n > maxConfig {
		return 0, fmt.Errorf("invalid length line %q", line)
	}
	return n, nil
}

// halt stops the program and its volumes, answers STOP and STOPZ, and
// asks init to finish (init1.py process_instruction and main; the
// supervisor's MicroVM.shutdown reads the two lines). Unlike the
// reference, the volumes are unmounted before the answer, so they are
// clean when the supervisor kills the VM right after it.
func (s *Server) halt(w io.Writer) {
	s.haltOnce.Do(func() {
		s.log.Info("halt from the supervisor")
		unix.Sync()
		if err := s.opt.Halt(); err != nil {
			s.log.Warn("stopping the program", "err", err)
		}
		unix.Sync()
		w.Write(haltStopped)
		w.Write(haltDone)
		s.opt.Shutdown("halt from the supervisor")
	})
}

// shell runs `!command` with a shell when enabled, answering its output
// as init1.py does (check_output with stderr joined; on failure the
// error's text, a newline and the output); else it refuses.
func (s *Server) shell(ctx context.Context, br *bufio.Reader, w io.Writer) {
	chunk := make([]byte, br.Buffered()) // the reference takes one read
	io.ReadFull(br, chunk)
	cmdline := string(chunk[1:])
	if !s.opt.Shell {
		s.log.Warn("refused a shell command from the supervisor", "command", cmdline)
		w.Write([]byte("init: shell commands are disabled in this image (create /etc/ferry/aleph-shell to enable them)\n"))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline)
	out, err := cmd.CombinedOutput()
	if err != nil {
		status := -1
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			status = ee.ExitCode()
		}
		out = append([]byte(fmt.Sprintf("Command '%s' returned non-zero exit status %d.\n", cmdline, status)), out...)
	}
	w.Write(out)
}

// idleReader reads a connection under a read deadline renewed before
// each read, until stop: a supervisor that goes silent in the middle of
// an instruction (or before its second byte: the sniffer's deadline was
// for the first) does not hold the connection and its goroutine for
// ever. Without deadline (a connection that takes none) it only reads.
type idleReader struct {
	r        io.Reader
	deadline func(time.Time) error
	timeout  time.Duration
	stopped  bool
}

func (ir *idleReader) Read(b []byte) (int, error) {
	if ir.deadline != nil && !ir.stopped {
		ir.deadline(time.Now().Add(ir.timeout))
	}
	return ir.r.Read(b)
}

// stop lifts the deadline: what is read next is awaited for as long as
// it takes. It is called by the goroutine that read so far, before any
// other reads.
func (ir *idleReader) stop() {
	ir.stopped = true
	if ir.deadline != nil {
		ir.deadline(time.Time{})
	}
}
