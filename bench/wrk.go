package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// wrkReport is the Lua done() hook that prints wrk's summary as one JSON
// line (latencies in microseconds).
const wrkReport = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('FERRY-BENCH {"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
`

// uploadScript makes every request a POST of size bytes.
func uploadScript(size int) string {
	return fmt.Sprintf(`wrk.method = "POST"
wrk.body = string.rep("x", %d)
wrk.headers["Content-Type"] = "application/octet-stream"
`, size)
}

// loadResult is one load generator run.
type loadResult struct {
	Requests int64
	Seconds  float64
	Errors   int64 // connection errors and timeouts
	Non2xx   int64
	P50, P99 time.Duration
}

func (r loadResult) rate() float64 {
	if r.Seconds == 0 {
		return 0
	}
	return float64(r.Requests) / r.Seconds
}

// wrkArgs is the wrk command line of one run.
func wrkArgs(url string, conns int, d time.Duration, script string) []string {
	return []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s",
		"--timeout", "10s", "-s", script, url}
}

// runWrk runs wrk against url with conns connections for d; preamble is Lua
// that shapes the requests (empty for GET).
func runWrk(ctx context.Context, dir, url string, conns int, d time.Duration, preamble string) (loadResult, error) {
	script, err := os.CreateTemp(dir, "wrk-*.lua")
	if err != nil {
		return loadResult{}, err
	}
	defer os.Remove(script.Name())
	if _, err := script.WriteString(preamble + wrkReport); err != nil {
		return loadResult{}, err
	}
	script.Close()
	cmd := exec.CommandContext(ctx, "wrk", wrkArgs(url, conns, d, filepath.Base(script.Name()))...)
	cmd.Dir = dir
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return loadResult{}, fmt.Errorf("wrk %s: %w: %s", url, err, strings.TrimSpace(stderr.String()))
	}
	return parseWrk(out.Bytes())
}

// parseWrk finds the line the done() hook printed in wrk's output.
func parseWrk(out []byte) (loadResult, error) {
	for _, line := range strings.Split(string(out), "\n") {
		rest, ok := strings.CutPrefix(line, "FERRY-BENCH ")
		if !ok {
			continue
		}
		var v struct {
			Requests   int64 `json:"requests"`
			DurationUS int64 `json:"duration_us"`
			Errors     int64 `json:"errors"`
			Non2xx     int64 `json:"non_2xx"`
			P50        int64 `json:"p50_us"`
			P99        int64 `json:"p99_us"`
		}
		if err := json.Unmarshal([]byte(rest), &v); err != nil {
			return loadResult{}, fmt.Errorf("wrk summary %q: %w", rest, err)
		}
		return loadResult{Requests: v.Requests, Seconds: float64(v.DurationUS) / 1e6, Errors: v.Errors, Non2xx: v.Non2xx,
			P50: time.Duration(v.P50) * time.Microsecond, P99: time.Duration(v.P99) * time.Microsecond}, nil
	}
	return loadResult{}, fmt.Errorf("no summary in wrk's output: %q", out)
}
