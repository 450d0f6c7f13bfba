package asgi

import (
	"os"
	"os/exec"
	"testing"
)

// The Python worker's framing reproduces every golden vector of the
// protocol byte for byte and decodes them back (test_worker.py).
func TestPythonFramingMatchesGoldenVectors(t *testing.T) {
	if _, err := os.Stat(DefaultPython); err != nil {
		t.Skipf("%s is missing (bash .ci/run installs it)", DefaultPython)
	}
	out, err := exec.Command(DefaultPython, "test_worker.py", "../../../protocol/testdata/vectors.json").CombinedOutput()
	if err != nil {
		t.Fatalf("test_worker.py: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// The embedded script is the one in the repository.
func TestEmbeddedScriptIsWorkerPy(t *testing.T) {
	disk, err := os.ReadFile("worker.py")
	if err != nil {
		t.Fatal(err)
	}
	if string(disk) != string(workerScript) {
		t.Fatal("embedded worker script differs from worker.py")
	}
	path, err := WriteWorkerScript(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if written, err := os.ReadFile(path); err != nil || string(written) != string(disk) {
		t.Fatalf("written script differs: %v", err)
	}
}
