package tests

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// The example's counter is not reset by a failed read: a 429 or a 503
// (rate limited, no quorum for a moment) answers an error and writes
// nothing; only a 404 starts the count at 1. Its calls go to a fake API
// on loopback, answering as the agent does.
func TestGuestAPIExampleKeepsItsCountOnErrors(t *testing.T) {
	python := debianPython // the VMs' Python, which has FastAPI
	requireTool(t, python)
	if err := exec.Command(python, "-c", "import fastapi").Run(); err != nil {
		t.Skipf("%s has no fastapi (apt-get install python3-fastapi)", python)
	}
	for _, tc := range []struct {
		status     int
		code       string
		wantPuts   int32
		wantAnswer string
	}{
		{http.StatusServiceUnavailable, "unavailable", 0, `"unavailable"`},
		{http.StatusTooManyRequests, "rate_limited", 0, `"rate_limited"`},
		{http.StatusNotFound, "no_such_key", 1, `"visits": 1`},
	} {
		t.Run(tc.code, func(t *testing.T) {
			var puts atomic.Int32
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == "GET" && r.URL.Path == "/v1/kv/visits":
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(tc.status)
					w.Write([]byte(`{"error": {"code": "` + tc.code + `", "message": "as the agent answers"}}`))
				case r.Method == "PUT" && r.URL.Path == "/v1/kv/visits":
					puts.Add(1)
					w.Write([]byte(`{"key": "visits", "size": 1}`))
				case r.URL.Path == "/v1/properties":
					w.Write([]byte(`{"program": "visits"}`))
				default:
					http.NotFound(w, r)
				}
			}))
			defer api.Close()
			cmd := exec.Command(python, "-c", "import json, main; print(json.dumps(main.visit()))")
			cmd.Dir = "../examples/guestapi"
			cmd.Env = append(os.Environ(), "FERRY_API_URL="+api.URL)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("the example: %v\n%s", err, out)
			}
			if puts.Load() != tc.wantPuts || !strings.Contains(string(out), tc.wantAnswer) {
				t.Fatalf("a read answered %d: %d writes, the answer %s; want %d writes and %s", tc.status, puts.Load(), out, tc.wantPuts, tc.wantAnswer)
			}
		})
	}
}
