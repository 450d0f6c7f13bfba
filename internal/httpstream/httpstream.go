// Package httpstream converts between net/http's requests and responses
// and the heads of Ferry streams (protocol/SPEC.md §4.2, §4.3), for every
// side that carries HTTP over a stream: the host agent's relay (a client's
// request becomes a stream), init's executable runner (a stream becomes a
// request to the program), and the guest API both ways (a program's call
// becomes a stream init opens, and the host serves it as a request).
package httpstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/ferry-vm/ferry/internal/httphdr"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// RequestHead builds the REQUEST head of r, with the path the receiver
// sees (path percent-decoded, rawPath as received) and the prefix it is
// mounted under (rootPath, empty for none). The headers are the client's,
// names in lower case, as uvicorn gives them to an app: host only when
// the client sent one (net/http refuses an HTTP/1.1 request without; an
// HTTP/1.0 request's empty Host cannot be told from none), and the fields
// net/http takes out of the header to frame the body, transfer-encoding
// and trailer, put back. It is on every request's path: the head, its
// header list and all its bytes are three allocations, whatever the
// number of fields (a declared trailer costs a few more).
func RequestHead(r *http.Request, path, rawPath, rootPath string) *message.RequestHead {
	clientHost, clientPort := splitAddr(r.RemoteAddr)
	var serverHost []byte // an IP's text, in a stack buffer
	var serverHostBuf [64]byte
	var serverPort uint32
	switch a := r.Context().Value(http.LocalAddrContextKey).(type) {
	case *net.TCPAddr: // the agent's listeners: no text to format and parse
		serverHost, _ = a.IP.AppendText(serverHostBuf[:0]) // never fails
		serverPort = uint32(a.Port)
		if a.Zone != "" {
			serverHost = append(append(serverHost, '%'), a.Zone...)
		}
	case net.Addr:
		if host, port := splitAddr(a.String()); host != "" {
			serverHost, serverPort = append(serverHostBuf[:0], host...), port
		}
	}
	version, scheme := httpVersion(r), "http"
	if r.TLS != nil {
		scheme = "https"
	}
	hasHost := r.Host != "" || r.ProtoAtLeast(1, 1)
	trailer := trailerValue(r.Trailer)
	// One arena holds every byte field; one slice every header field.
	size := len(version) + len(r.Method) + len(scheme) + len(path) + len(rawPath) + len(r.URL.RawQuery) +
		len(rootPath) + len(clientHost) + len(serverHost) + len("host") + len(r.Host)
	fields := 1
	for name, values := range r.Header {
		for _, v := range values {
			size += len(name) + len(v)
			fields++
		}
	}
	if len(r.TransferEncoding) > 0 {
		size += len("transfer-encoding")
		for _, v := range r.TransferEncoding {
			size += len(v) + len(", ")
		}
		fields++
	}
	if trailer != "" {
		size += len("trailer") + len(trailer)
		fields++
	}
	a := arena(make([]byte, 0, size))
	h := &message.RequestHead{
		HTTPVersion: a.add(version), Method: a.add(r.Method), Scheme: a.add(scheme),
		Path: a.add(path), RawPath: a.add(rawPath), QueryString: a.add(r.URL.RawQuery),
		RootPath: a.add(rootPath), ClientHost: a.add(clientHost), ClientPort: clientPort,
		ServerHost: a.addBytes(serverHost), ServerPort: serverPort,
		Headers: make([]message.HeaderField, 0, fields),
	}
	if hasHost {
		h.Headers = append(h.Headers, message.HeaderField{Name: a.add("host"), Value: a.add(r.Host)})
	}
	for name, values := range r.Header {
		if strings.EqualFold(name, "host") {
			continue
		}
		for _, v := range values {
			h.Headers = append(h.Headers, message.HeaderField{Name: a.addLower(name), Value: a.add(v)})
		}
	}
	if len(r.TransferEncoding) > 0 {
		// net/http accepts only "chunked", alone, and keeps it here.
		start := len(a)
		for i, v := range r.TransferEncoding {
			if i > 0 {
				a = append(a, ", "...)
			}
			a = append(a, v...)
		}
		value := a[start:len(a):len(a)]
		h.Headers = append(h.Headers, message.HeaderField{Name: a.add("transfer-encoding"), Value: value})
	}
	if trailer != "" {
		h.Headers = append(h.Headers, message.HeaderField{Name: a.add("trailer"), Value: a.add(trailer)})
	}
	return h
}

// trailerValue is the Trailer field net/http took out of the header into
// the keys of r.Trailer: the names, in lower case, sorted (the order they
// were sent in is lost), comma-separated; "" for none.
func trailerValue(trailer http.Header) string {
	if len(trailer) == 0 {
		return ""
	}
	names := make([]string, 0, len(trailer))
	for name := range trailer {
		names = append(names, strings.ToLower(name))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// arena hands out slices of one buffer, allocated at its final size.
type arena []byte

// add copies s into the arena and returns its copy (nil for "").
func (a *arena) add(s string) []byte {
	if s == "" {
		return nil
	}
	start := len(*a)
	*a = append(*a, s...)
	return (*a)[start:len(*a):len(*a)]
}

// addBytes is add for bytes.
func (a *arena) addBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	start := len(*a)
	*a = append(*a, b...)
	return (*a)[start:len(*a):len(*a)]
}

// addLower is add of s in lower case (ASCII: header names are tokens).
func (a *arena) addLower(s string) []byte {
	b := a.add(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return b
}

// splitAddr splits "host:port" without allocating; a malformed address
// gives no host and port 0.
func splitAddr(addr string) (host string, port uint32) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0
	}
	if n, err := strconv.ParseUint(p, 10, 16); err == nil {
		port = uint32(n)
	}
	return host, port
}

func httpVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2:
		return "2"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0"
	}
	return "1.1"
}

// NewRequest builds the HTTP/1.1 request a stream's REQUEST head
// describes, with the stream as its body, ready for a client transport
// (URL with scheme http and host "program"; a server-side handler clears
// them). Hop-by-hop headers are dropped, except Connection and Upgrade
// when the request asks for an upgrade, which upgrade reports (its bytes
// follow the 101, not as a body). A bad target or Content-Length is an
// error.
func NewRequest(ctx context.Context, head *message.RequestHead, st *mux.Stream) (req *http.Request, upgrade bool, err error) {
	target := string(head.RawPath)
	if target == "" {
		target = string(head.Path)
	}
	if target == "" || target[0] != '/' {
		target = "/" + target
	}
	if len(head.QueryString) > 0 {
		target += "?" + string(head.QueryString)
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return nil, false, fmt.Errorf("bad request target %q: %v", target, err)
	}
	u.Scheme, u.Host = "http", "program"
	method := string(head.Method)
	if method == "" {
		method = http.MethodGet
	}
	req = (&http.Request{Method: method, URL: u, Header: http.Header{}, ContentLength: -1,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Host: "program"}).WithContext(ctx)
	var connection, upgradeTo string
	var listed []string // the Connection fields' values: the options they name are hop-by-hop
	for _, h := range head.Headers {
		if strings.EqualFold(string(h.Name), "connection") {
			listed = append(listed, string(h.Value))
		}
	}
	for _, h := range head.Headers {
		name, value := strings.ToLower(string(h.Name)), string(h.Value)
		switch name {
		case "host":
			req.Host = value
			continue
		case "content-length":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 {
				return nil, false, fmt.Errorf("bad content-length %q", value)
			}
			req.ContentLength = n
			continue
		case "connection":
			connection = value
		case "upgrade":
			upgradeTo = value
		}
		if httphdr.IsHopByHop(name) && name != "connection" && name != "upgrade" && name != "te" ||
			name != "upgrade" && httphdr.Listed(listed, name) {
			continue
		}
		req.Header.Add(name, value)
	}
	upgrade = upgradeTo != "" && httphdr.HasToken(connection, "upgrade")
	if !upgrade {
		req.Header.Del("connection")
		req.Header.Del("upgrade")
	}
	switch {
	case upgrade:
		req.Body, req.ContentLength = http.NoBody, 0
	case req.ContentLength == 0:
		req.Body = http.NoBody
	default:
		if n, err := st.TryRead(nil); n == 0 && err == io.EOF {
			req.Body, req.ContentLength = http.NoBody, 0
		} else {
			req.Body = io.NopCloser(st)
		}
	}
	return req, upgrade, nil
}

// StreamContext returns a context derived from ctx that also ends when
// st is reset (by either side) or its session closes, so that the work
// serving st stops when its peer gives up; call cancel when done.
func StreamContext(ctx context.Context, st *mux.Stream) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-st.Done():
			if st.Err() != nil {
				cancel()
			}
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// JSONError writes the guest API's error (protocol/SPEC.md §5.7), the
// same from init and from the agent: status, and the body
// {"error": {"code": code, "message": msg}}.
func JSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// ResponseHead is the RESPONSE head for an HTTP status and header, names
// in lower case, without the hop-by-hop fields (RFC 9110 §7.6.1: the fixed
// set and those Connection lists). Connection and Upgrade are kept when
// switching protocols, and Upgrade on a 426 (Upgrade Required), which RFC
// 9110 §15.5.22 says must carry it.
func ResponseHead(status int, header http.Header, switching bool) message.ResponseHead {
	rh := message.ResponseHead{Status: uint32(status)}
	listed := header["Connection"]
	for name, values := range header {
		lname := strings.ToLower(name)
		keep := switching && (lname == "connection" || lname == "upgrade") ||
			status == http.StatusUpgradeRequired && lname == "upgrade"
		if !keep && (httphdr.IsHopByHop(lname) || httphdr.Listed(listed, lname)) {
			continue
		}
		for _, v := range values {
			rh.Headers = append(rh.Headers, message.HeaderField{Name: []byte(lname), Value: []byte(v)})
		}
	}
	return rh
}

// Trailers is a header (an HTTP response's trailers) as a header list.
func Trailers(h http.Header) []message.HeaderField {
	var trailers []message.HeaderField
	for name, values := range h {
		for _, v := range values {
			trailers = append(trailers, message.HeaderField{Name: []byte(strings.ToLower(name)), Value: []byte(v)})
		}
	}
	return trailers
}
