package tests

import (
	"fmt"
	"os"
	"testing"

	"github.com/ferry-vm/ferry/host/backend/sandbox"
)

// buildRoot holds the programs the tests compile (goBuild: init, test
// servers): one directory per test binary, removed when it ends, so that
// a run leaves none of them in the temporary directory.
var buildRoot string

// TestMain lets this test binary be the sandbox's first stage: tests that
// start sandboxes in-process (lifecycle, relay benchmarks) re-execute it.
func TestMain(m *testing.M) {
	sandbox.RunStageIfRequested()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ferry-tests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests: a directory for the programs the tests build:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	buildRoot = dir
	return m.Run()
}
