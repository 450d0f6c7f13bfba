package tests

import (
	"os"
	"testing"

	"github.com/ferry-vm/ferry/host/backend/sandbox"
)

// TestMain lets this test binary be the sandbox's first stage: tests that
// start sandboxes in-process (lifecycle, relay benchmarks) re-execute it.
func TestMain(m *testing.M) {
	sandbox.RunStageIfRequested()
	os.Exit(m.Run())
}
