package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// MsgpackFront is the host side of design C, the per-request msgpack
// design Ferry replaces, as Aleph.im's supervisor does it: every HTTP
// request reads the whole body, opens a new connection to the guest's
// socket, writes "CONNECT 52\n" and one msgpack document {"scope": ...}
// with the body inside, reads the "OK" line and then everything until the
// guest closes, and decodes one msgpack reply with the response head and
// the whole body.
type MsgpackFront struct {
	Socket string // the guest's unix socket (Firecracker's vsock proxy in Aleph)
	Log    *slog.Logger
}

// msgpackReply is the guest's answer: the app's http.response.start and
// its first http.response.body message, and its captured output.
type msgpackReply struct {
	Headers struct {
		Status  int        `msgpack:"status"`
		Headers [][][]byte `msgpack:"headers"`
	} `msgpack:"headers"`
	Body struct {
		Body []byte `msgpack:"body"`
	} `msgpack:"body"`
	Output string `msgpack:"output"`
}

func (f *MsgpackFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	headers := make([][2][]byte, 0, len(r.Header)+1)
	headers = append(headers, [2][]byte{[]byte("host"), []byte(r.Host)})
	for name, values := range r.Header {
		for _, v := range values {
			headers = append(headers, [2][]byte{[]byte(strings.ToLower(name)), []byte(v)})
		}
	}
	scope := map[string]any{
		"type": "http", "asgi": map[string]string{"version": "3.0"}, "http_version": "1.1",
		"method": r.Method, "scheme": "http", "path": r.URL.Path, "raw_path": []byte(r.URL.EscapedPath()),
		"query_string": []byte(r.URL.RawQuery), "root_path": "", "headers": headers, "body": body,
	}
	reply, err := f.exchange(r.Context(), map[string]any{"scope": scope})
	if err != nil {
		if f.Log != nil {
			f.Log.Warn("msgpack exchange failed", "err", err)
		}
		http.Error(w, "the program failed to answer", http.StatusBadGateway)
		return
	}
	for _, h := range reply.Headers.Headers {
		if len(h) == 2 {
			w.Header().Add(string(h[0]), string(h[1]))
		}
	}
	w.WriteHeader(reply.Headers.Status)
	w.Write(reply.Body.Body)
}

// exchange is one request: a new connection, the preamble, the document,
// the reply.
func (f *MsgpackFront) exchange(ctx context.Context, payload any) (*msgpackReply, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", f.Socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	doc, err := msgpack.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("encoding the scope: %w", err)
	}
	if _, err := conn.Write(append([]byte("CONNECT 52\n"), doc...)); err != nil {
		return nil, fmt.Errorf("sending: %w", err)
	}
	rd := bufio.NewReader(conn)
	ack, err := rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(ack, "OK ") {
		return nil, fmt.Errorf("no OK from the guest (%q): %v", ack, err)
	}
	raw, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("reading the reply: %w", err)
	}
	var reply msgpackReply
	if err := msgpack.Unmarshal(raw, &reply); err != nil {
		return nil, fmt.Errorf("decoding the reply (%d bytes): %w", len(raw), err)
	}
	if reply.Headers.Status == 0 {
		return nil, fmt.Errorf("reply without a status")
	}
	return &reply, nil
}
