package asgi

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
)

// workerConstant returns the value of worker.py's NAME = N (or N << M)
// line.
func workerConstant(t *testing.T, name string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + ` = (\d+)(?: << (\d+))?\s*(?:#.*)?$`).FindSubmatch(workerScript)
	if m == nil {
		t.Fatalf("worker.py has no %s = N or N << M line", name)
	}
	n, _ := strconv.Atoi(string(m[1]))
	if len(m[2]) > 0 {
		shift, _ := strconv.Atoi(string(m[2]))
		n <<= shift
	}
	return n
}

// The worker enforces the contract's websocket message limit: worker.py's
// MAX_WS_MESSAGE is contract.MaxWebSocketMessage.
func TestWorkerWebSocketLimitIsTheContracts(t *testing.T) {
	if n := workerConstant(t, "MAX_WS_MESSAGE"); n != contract.MaxWebSocketMessage {
		t.Fatalf("worker.py's MAX_WS_MESSAGE is %d, the contract's MaxWebSocketMessage %d", n, contract.MaxWebSocketMessage)
	}
}

// The worker refuses a response head larger than init's frames on every
// channel (the host's data channels take larger frames): worker.py's
// MAX_RESPONSE_HEAD is the frame size init announces.
func TestWorkerResponseHeadLimitIsInitsFrameSize(t *testing.T) {
	if n := workerConstant(t, "MAX_RESPONSE_HEAD"); n != frame.DefaultMaxSize {
		t.Fatalf("worker.py's MAX_RESPONSE_HEAD is %d, init's frame size %d", n, frame.DefaultMaxSize)
	}
}
