package daemon

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
)

// With --log-format json, run's stderr is slog's JSON alone: the program's
// output as records too, and a request's error with the id the client
// got in X-Request-Id.
func TestRunLogsJSON(t *testing.T) {
	cfg, err := flagConfig(t, RunFlags, "--listen", "127.0.0.1:0", "--timeout", "200ms", "--log-format", "json", t.TempDir(), "main:app")
	if err != nil {
		t.Fatal(err)
	}
	a, url := serving(t, cfg, &backendtest.Backend{Handler: backendtest.Echo, Logs: 1}, "ferry: serving main:app", "/")
	resp, err := http.Get(url + "/sleep")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != http.StatusGatewayTimeout || id == "" {
		t.Fatalf("%d, X-Request-Id %q", resp.StatusCode, id)
	}
	records := func() []map[string]any {
		var out []map[string]any
		for _, line := range strings.Split(strings.TrimSpace(a.stderr.String()), "\n") {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["time"] == nil || rec["level"] == nil {
				t.Fatalf("not a slog JSON record: %q (%v)", line, err)
			}
			out = append(out, rec)
		}
		return out
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var output, timedOut bool
		for _, rec := range records() {
			output = output || rec["msg"] == "program output" && rec["line"] == "line 0" && rec["source"] == "stdout" && rec["program"] == "main"
			timedOut = timedOut || rec["request_id"] == id && rec["status"] == float64(http.StatusGatewayTimeout)
		}
		if output && timedOut {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("program output %v, the 504 with its request id %v, in:\n%s", output, timedOut, a.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
