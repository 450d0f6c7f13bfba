package httphdr

import "testing"

// Hop-by-hop is RFC 9110 §7.6.1's fixed set and nothing else: the
// end-to-end fields a 407 or a trailer needs pass.
func TestHopByHopAndTokens(t *testing.T) {
	for _, n := range []string{"connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"} {
		if !IsHopByHop(n) {
			t.Errorf("%s should be hop-by-hop", n)
		}
	}
	for _, n := range []string{"content-length", "Connection", "proxy-authenticate", "proxy-authorization", "trailer", "host"} {
		if IsHopByHop(n) {
			t.Errorf("%s should not be hop-by-hop", n)
		}
	}
	if !HasToken("keep-alive, Upgrade", "upgrade") || HasToken("upgrade-insecure", "upgrade") || !HasToken("a,\tclose ", "close") {
		t.Error("token matching")
	}
	if !Listed([]string{"keep-alive", "X-Private, close"}, "x-private") || Listed([]string{"close"}, "x-private") || Listed(nil, "close") {
		t.Error("Connection's list")
	}
}
