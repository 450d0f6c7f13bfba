// Package httphdr holds the few HTTP header rules both relays (init's to
// executables, the host agent's from clients) apply: which headers belong
// to one connection and are never relayed, and token lists like
// "Connection: keep-alive, Upgrade".
package httphdr

import "strings"

// hopByHop are the connection's headers, not the message's (RFC 9110
// 7.6.1), in lower case.
var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true,
	"te": true, "trailer": true, "upgrade": true, "proxy-authenticate": true, "proxy-authorization": true,
}

// IsHopByHop reports whether the lower-case header name is hop-by-hop.
func IsHopByHop(name string) bool { return hopByHop[name] }

// HasToken reports whether a comma-separated header value contains token,
// ignoring case and spaces.
func HasToken(value, token string) bool {
	for _, t := range strings.Split(value, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}
