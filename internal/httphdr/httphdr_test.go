package httphdr

import "testing"

func TestHopByHopAndTokens(t *testing.T) {
	for _, n := range []string{"connection", "transfer-encoding", "upgrade", "te"} {
		if !IsHopByHop(n) {
			t.Errorf("%s should be hop-by-hop", n)
		}
	}
	if IsHopByHop("content-length") || IsHopByHop("Connection") {
		t.Error("only lower-case hop-by-hop names match")
	}
	if !HasToken("keep-alive, Upgrade", "upgrade") || HasToken("upgrade-insecure", "upgrade") {
		t.Error("token matching")
	}
}
