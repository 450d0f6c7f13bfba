package relay

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/ferry-vm/ferry/internal/httphdr"
	"github.com/ferry-vm/ferry/internal/lines"
	"github.com/ferry-vm/ferry/protocol/message"
)

// checkResponseHead checks a program's response head before any of it
// reaches the client, so that what the agent sends is always one
// well-framed HTTP/1.1 response: a proxy in front of Ferry must never
// split the connection differently than the client does. It rejects
//
//   - a status outside 200-599: Serve never switches protocols (upgrades
//     go through ServeWebSocket and ServeUpgrade), and an informational
//     status cannot be the final answer;
//   - a header name that is not a token, or a value with control
//     characters (CR, LF and NUL included), which net/http would otherwise
//     drop or rewrite silently;
//   - a Content-Length that is not a non-negative decimal number, or
//     several that differ (RFC 9110 8.6);
//   - Content-Length together with Transfer-Encoding (RFC 9112 6.1).
//
// Identical Content-Length values ("5" twice, or "5, 5") are collapsed
// into one field, as RFC 9110 8.6 allows. Transfer-Encoding alone is
// left to the caller, which drops it (net/http frames the body itself).
func checkResponseHead(rh *message.ResponseHead) error {
	if rh.Status < 200 || rh.Status > 599 {
		return fmt.Errorf("status %d is not a final HTTP status", rh.Status)
	}
	var length []byte // the Content-Length value, canonical
	transferEncoding := false
	for _, f := range rh.Headers {
		if !httpguts.ValidHeaderFieldName(string(f.Name)) {
			return fmt.Errorf("header name %q is not a token", f.Name)
		}
		if !httpguts.ValidHeaderFieldValue(string(f.Value)) {
			return fmt.Errorf("header %s has control characters in its value %q", f.Name, f.Value)
		}
		switch {
		case bytes.EqualFold(f.Name, []byte("content-length")):
			v, err := parseContentLength(f.Value)
			if err != nil {
				return err
			}
			if length != nil && !bytes.Equal(v, length) {
				return fmt.Errorf("conflicting content-length values %s and %s", length, v)
			}
			length = v
		case bytes.EqualFold(f.Name, []byte("transfer-encoding")):
			transferEncoding = true
		}
	}
	if length != nil && transferEncoding {
		return fmt.Errorf("both content-length and transfer-encoding")
	}
	if length != nil {
		collapseContentLength(rh, length)
	}
	return nil
}

// parseContentLength parses a Content-Length value, possibly a list of
// identical values ("5, 5", what a proxy that merged two fields sends),
// and returns the number in canonical form.
func parseContentLength(v []byte) ([]byte, error) {
	var canonical []byte
	for elem := range bytes.SplitSeq(v, []byte(",")) {
		elem = bytes.Trim(elem, " \t")
		if len(elem) == 0 {
			return nil, fmt.Errorf("content-length %q is not a number", v)
		}
		for _, c := range elem {
			if c < '0' || c > '9' {
				return nil, fmt.Errorf("content-length %q is not a non-negative number", v)
			}
		}
		n, err := strconv.ParseInt(string(elem), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("content-length %q is too large", v)
		}
		c := strconv.AppendInt(nil, n, 10)
		if canonical != nil && !bytes.Equal(c, canonical) {
			return nil, fmt.Errorf("conflicting content-length values in %q", v)
		}
		canonical = c
	}
	return canonical, nil
}

// collapseContentLength leaves one Content-Length field, the first, with
// the canonical value. The header list is the caller's own decoded copy
// and is edited in place.
func collapseContentLength(rh *message.ResponseHead, length []byte) {
	kept, seen := rh.Headers[:0], false
	for _, f := range rh.Headers {
		if bytes.EqualFold(f.Name, []byte("content-length")) {
			if seen {
				continue
			}
			seen = true
			f.Value = length
		}
		kept = append(kept, f)
	}
	rh.Headers = kept
}

// writeHead writes a response head from the program, with contentLength
// as its Content-Length unless empty. The client gets the app's headers
// as sent, as uvicorn sends them: the app is the origin server and the
// agent its HTTP server, not a proxy, so no field is dropped as hop-by-hop
// (Upgrade on a 426, Keep-Alive, Proxy-Authenticate on a 407 pass) but
// Transfer-Encoding, since net/http frames the body itself; a Connection
// field with "close" closes the client's connection after the response.
// X-Request-Id is the request's id unless the app sent its own (then
// ex.AppID, if it differs).
// A nil Content-Type stops net/http from sniffing one when the app sent
// none (the app's own is added to it). It is on every
// response's path: the values share one string and one list, and the
// usual names need no canonicalising.
func writeHead(w http.ResponseWriter, ex *Exchange, rh *message.ResponseHead, contentLength string) {
	size := 0
	for _, f := range rh.Headers {
		size += len(f.Value)
	}
	var all strings.Builder
	all.Grow(size)
	for _, f := range rh.Headers {
		all.Write(f.Value)
	}
	values, lists := all.String(), make([]string, 0, len(rh.Headers)+2)
	h := w.Header()
	add := func(name, v string) {
		if len(h[name]) > 0 { // a field sent more than once
			h[name] = append(h[name], v)
			return
		}
		lists = append(lists, v)
		h[name] = lists[len(lists)-1 : len(lists) : len(lists)]
	}
	h["Content-Type"] = nil
	closing := false
	for _, f := range rh.Headers {
		v := values[:len(f.Value)]
		values = values[len(f.Value):]
		switch string(f.Name) {
		case "transfer-encoding": // net/http frames the body itself
			continue
		case "connection":
			if httphdr.HasToken(v, "close") {
				closing = true
				continue
			}
		}
		name, ok := canonicalNames[string(f.Name)]
		if !ok {
			name = http.CanonicalHeaderKey(string(f.Name))
		}
		add(name, v)
	}
	if contentLength != "" {
		h["Content-Length"] = nil
		add("Content-Length", contentLength)
	}
	if closing {
		// net/http closes the connection after the response, and says
		// so, only for a Connection field of exactly "close".
		h["Connection"] = []string{"close"}
	}
	if ids := h["X-Request-Id"]; len(ids) > 0 {
		// The app's own passes as it sent it (as under uvicorn); the
		// agent's log goes on naming the request by its own id (the one
		// its earlier lines, and the client's proxies, know), with the
		// app's beside it.
		if ids[0] != ex.ID {
			ex.AppID = keptAppID(ids[0])
		}
	} else {
		add("X-Request-Id", ex.ID)
	}
	w.WriteHeader(int(rh.Status))
}

// CheckResponseHead is checkResponseHead for a front that writes the
// response itself (host/loopfront).
func CheckResponseHead(rh *message.ResponseHead) error { return checkResponseHead(rh) }

// CanonicalName returns the canonical form of a lower-case field name,
// without allocating for the usual ones.
func CanonicalName(name []byte) string {
	if c, ok := canonicalNames[string(name)]; ok {
		return c
	}
	return http.CanonicalHeaderKey(string(name))
}

// KeptAppID is the app's own request id as the agent keeps it.
func KeptAppID(id string) string { return keptAppID(id) }

// canonicalNames maps the lower-case names of the usual response fields
// to their canonical form (what http.CanonicalHeaderKey returns, without
// its allocations).
var canonicalNames = map[string]string{
	"accept-ranges": "Accept-Ranges", "access-control-allow-origin": "Access-Control-Allow-Origin",
	"age": "Age", "cache-control": "Cache-Control", "content-disposition": "Content-Disposition",
	"content-encoding": "Content-Encoding", "content-language": "Content-Language", "content-length": "Content-Length",
	"content-security-policy": "Content-Security-Policy", "content-type": "Content-Type", "date": "Date",
	"etag": "Etag", "expires": "Expires", "last-modified": "Last-Modified", "link": "Link", "location": "Location",
	"server": "Server", "set-cookie": "Set-Cookie", "strict-transport-security": "Strict-Transport-Security",
	"vary": "Vary", "www-authenticate": "Www-Authenticate", "x-content-type-options": "X-Content-Type-Options",
	"x-frame-options": "X-Frame-Options",
}

// maxAppID bounds the app's own request id as the agent keeps it (its
// log, the recent requests): as long as an id the agent takes from a
// client (wellFormedID). The client gets the app's header whole.
const maxAppID = 128

// keptAppID is the app's id as the exchange keeps it: at most maxAppID
// bytes (cut at a character, then "..."), copied, so that a record of the
// request does not keep the app's whole response head (a worker's frame,
// up to 256 KiB) alive.
func keptAppID(id string) string {
	return strings.Clone(lines.Shorten(id, maxAppID))
}
