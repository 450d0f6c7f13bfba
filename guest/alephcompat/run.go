package alephcompat

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"strings"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ferry-vm/ferry/internal/httpstream"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
)

// run serves a run request: the scope becomes a request on a stream of
// the loop-back session (so init's app serves it as it serves the host's
// streams, concurrently), its whole body is sent, and the whole response
// is answered in one document. The supervisor closing the connection
// (its time limit) cancels the request. read is called once the request
// is read, before the connection is watched for its close.
func (s *Server) run(ctx context.Context, br *bufio.Reader, conn io.ReadWriteCloser, read func()) {
	var req runRequest
	doc, err := readDoc(br, maxRun)
	if err == nil {
		err = msgpack.Unmarshal(doc, &req)
	}
	if err != nil {
		s.refuse(conn, "invalid run request: "+err.Error())
		return
	}
	doc = nil
	s.mu.Lock()
	iface := s.iface
	s.mu.Unlock()
	if iface == "" {
		s.refuse(conn, "the program is not configured")
		return
	}
	if req.Scope.Type != "http" {
		s.refuse(conn, fmt.Sprintf("scope type %q is not served by this init (only http)", req.Scope.Type))
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	read()
	go func() {
		// Nothing more comes from the supervisor: a read returns only
		// when it has gone.
		io.Copy(io.Discard, br)
		cancel()
	}()
	res, err := s.exchange(ctx, &req.Scope)
	if err != nil {
		s.log.Debug("run request failed", "path", req.Scope.Path, "err", err)
		writeDoc(conn, &runError{Error: err.Error(), Traceback: err.Error()})
		return
	}
	if iface == contract.InterfaceASGI {
		res.OutputData = s.outputData()
	}
	if err := writeDoc(conn, res); err != nil {
		s.log.Debug("cannot answer a run request", "err", err)
	}
}

// exchange carries one request to the program and returns its response.
func (s *Server) exchange(ctx context.Context, sc *scope) (*runResult, error) {
	st, err := s.loop.Open(ctx, requestHead(sc), nil, false)
	if err != nil {
		return nil, fmt.Errorf("opening a request to the program: %w", err)
	}
	httpstream.CopyBody(bytes.NewReader(sc.Body), st, 0)
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		st.Reset(0, "")
		return nil, fmt.Errorf("the program did not answer: %w", err)
	}
	res := &runResult{
		Headers: responseStart{Type: "http.response.start", Status: int(rh.Status), Headers: make([][][]byte, 0, len(rh.Headers))},
		Body:    responseBody{Type: "http.response.body"},
	}
	for _, h := range rh.Headers {
		res.Headers.Headers = append(res.Headers.Headers, [][]byte{bytes.Clone(h.Name), bytes.Clone(h.Value)})
	}
	var body bytes.Buffer
	n, err := io.Copy(&body, io.LimitReader(st, maxResponse+1))
	if err == nil && n > maxResponse {
		err = fmt.Errorf("response body larger than %d bytes", maxResponse)
	}
	if err != nil {
		st.Reset(0, "")
		return nil, fmt.Errorf("the program's response broke off: %w", err)
	}
	res.Body.Body = body.Bytes()
	return res, nil
}

// requestHead is the scope as a Ferry request head; what the supervisor
// leaves out takes ASGI's defaults (HTTP/1.1, http, the path escaped as
// the raw path).
func requestHead(sc *scope) *message.RequestHead {
	h := &message.RequestHead{
		Kind:        message.KindHTTP,
		HTTPVersion: []byte(orDefault(sc.HTTPVersion, "1.1")),
		Method:      []byte(strings.ToUpper(orDefault(sc.Method, "GET"))),
		Scheme:      []byte(orDefault(sc.Scheme, "http")),
		Path:        []byte(orDefault(sc.Path, "/")),
		RawPath:     sc.RawPath,
		QueryString: sc.QueryString,
		RootPath:    []byte(sc.RootPath),
	}
	if len(h.RawPath) == 0 {
		h.RawPath = []byte((&url.URL{Path: string(h.Path)}).EscapedPath())
	}
	for _, kv := range sc.Headers {
		if len(kv) == 2 {
			h.Headers = append(h.Headers, message.HeaderField{Name: bytes.ToLower(kv[0]), Value: kv[1]})
		}
	}
	return h
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// outputData zips the program's data directory when it holds anything,
// as init1.py does after each request; empty otherwise.
func (s *Server) outputData() []byte {
	entries, err := os.ReadDir(s.opt.DataDir)
	if err != nil || len(entries) == 0 {
		return []byte{}
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	if err := zw.AddFS(os.DirFS(s.opt.DataDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot zip the data directory for output_data", "err", err)
		return []byte{}
	}
	if err := zw.Close(); err != nil {
		return []byte{}
	}
	return buf.Bytes()
}
