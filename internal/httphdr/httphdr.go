// Package httphdr holds the few HTTP header rules both relays (init's to
// executables, the host agent's from clients) apply: which headers belong
// to one connection and are never relayed, and token lists like
// "Connection: keep-alive, Upgrade".
package httphdr

import "strings"

// IsHopByHop reports whether the lower-case header name is one of the
// fields RFC 9110 §7.6.1 names as belonging to one connection:
// Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
// Upgrade. The fields a message's Connection header lists are hop-by-hop
// too (see Listed); nothing else is (Proxy-Authenticate, which a 407
// carries, and Trailer are the message's own).
func IsHopByHop(name string) bool {
	switch name {
	case "connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// Listed reports whether the header name is among the options the
// Connection field values list (RFC 9110 §7.6.1), ignoring case.
func Listed(connection []string, name string) bool {
	for _, v := range connection {
		if HasToken(v, name) {
			return true
		}
	}
	return false
}

// HasToken reports whether a comma-separated header value contains token,
// ignoring case and spaces. It allocates nothing.
func HasToken(value, token string) bool {
	for t := range strings.SplitSeq(value, ",") {
		if strings.EqualFold(strings.Trim(t, " \t"), token) {
			return true
		}
	}
	return false
}
