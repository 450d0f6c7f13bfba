package tests

import (
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
)

// outputFloodApp prints ?lines=N lines of about 100 bytes in a thread of
// its own when asked at /flood; every path answers how many it printed.
const outputFloodApp = `
import sys, threading
printed = [0]

def flood(n):
    line = "flood " + "x" * 93 + "\n"
    while printed[0] < n:
        k = min(1000, n - printed[0])
        sys.stdout.write(line * k)
        sys.stdout.flush()
        printed[0] += k

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/flood":
        n = int(scope["query_string"].decode().partition("=")[2])
        threading.Thread(target=flood, args=(n,), daemon=True).start()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(printed[0]).encode()})
`

// outputGet fetches url with a bound on the whole exchange.
func outputGet(url string, patience time.Duration) (string, error) {
	resp, err := (&http.Client{Timeout: patience}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// With host-agent run's stderr on a pipe that nobody reads, an app that
// floods its output does not stop requests from being answered.
func TestHostileOutputNeverBlocksRequests(t *testing.T) {
	requirePythonModules(t, "threading")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// Closed only after the agent ended (cleanups run last-in first-out):
	// a closed read end would kill it with SIGPIPE instead.
	t.Cleanup(func() { r.Close() })
	code := writeApp(t, map[string]string{"main.py": outputFloodApp})
	url := "http://" + startAgent(t, "run", agentOptions{stderr: w}, "--workers", "1", code, "main:app").addr
	w.Close() // the agent has its own copy

	if _, err := outputGet(url+"/flood?lines=100000", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// 10 MB of output against a 64 KiB pipe nobody reads: requests are
	// answered all along, and the app gets to print it all.
	for i := range 20 {
		began := time.Now()
		if _, err := outputGet(url+"/", 10*time.Second); err != nil {
			t.Fatalf("request %d during the flood: %v", i, err)
		}
		if took := time.Since(began); took > time.Second {
			t.Logf("request %d took %s", i, took)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, time.Minute, func() bool {
		body, err := outputGet(url+"/", 10*time.Second)
		return err == nil && body == "100000"
	}, "the app could not print its output")
}

// countingWriter counts and keeps what the agent writes to its stderr.
type countingWriter struct {
	n   atomic.Int64
	buf syncbuf.Buffer
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	if c.n.Load() < 4<<20 {
		c.buf.Write(p)
	}
	return len(p), nil
}

// A guest's flood of 20 MB of output reaches the agent's stderr only at
// the rate limit: a small fraction of it, with the count of the dropped
// lines, also in ferry_program_log_lines_dropped_total.
func TestHostileOutputFloodIsBounded(t *testing.T) {
	requirePythonModules(t, "threading")
	stderr := &countingWriter{}
	metricsAddr := freePort(t)
	code := writeApp(t, map[string]string{"main.py": outputFloodApp})
	url := "http://" + startAgent(t, "run", agentOptions{stderr: stderr}, "--workers", "1", "--metrics-listen", metricsAddr, code, "main:app").addr
	before := stderr.n.Load()

	const lines = 200000 // of 100 bytes: 20 MB
	if _, err := outputGet(url+"/flood?lines="+strconv.Itoa(lines), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	waitFor(t, 2*time.Minute, func() bool {
		body, err := outputGet(url+"/", 10*time.Second)
		return err == nil && body == strconv.Itoa(lines)
	}, "the app did not print its output")
	time.Sleep(5 * time.Second) // the lines in flight, and a report of the dropped
	written := stderr.n.Load() - before
	t.Logf("the app printed %d MB in %s; the agent wrote %d KB to its stderr", lines*100>>20, time.Since(began).Round(time.Millisecond), written>>10)
	if written > 2<<20 {
		t.Fatalf("the agent wrote %d bytes to stderr for a flood of %d", written, lines*100)
	}
	if out := stderr.buf.String(); !strings.Contains(out, "lines of output dropped") {
		t.Fatalf("no report of the dropped lines in the agent's output:\n%.3000s", out)
	}
	m := curl(t, "http://"+metricsAddr+"/metrics")
	if v := metricValue(t, m, `ferry_program_log_lines_dropped_total{program="main"}`); v < lines/2 {
		t.Fatalf("ferry_program_log_lines_dropped_total = %v for %d lines at 100 a second", v, lines)
	}
}
