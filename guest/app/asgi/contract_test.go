package asgi

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// The worker enforces the contract's websocket message limit: worker.py's
// MAX_WS_MESSAGE (written as N or N << M) is contract.MaxWebSocketMessage.
func TestWorkerWebSocketLimitIsTheContracts(t *testing.T) {
	m := regexp.MustCompile(`(?m)^MAX_WS_MESSAGE = (\d+)(?: << (\d+))?\s*(?:#.*)?$`).FindSubmatch(workerScript)
	if m == nil {
		t.Fatal("worker.py has no MAX_WS_MESSAGE = N or N << M line")
	}
	n, _ := strconv.Atoi(string(m[1]))
	if len(m[2]) > 0 {
		shift, _ := strconv.Atoi(string(m[2]))
		n <<= shift
	}
	if n != contract.MaxWebSocketMessage {
		t.Fatalf("worker.py's MAX_WS_MESSAGE is %d, the contract's MaxWebSocketMessage %d", n, contract.MaxWebSocketMessage)
	}
}
