package guestapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/internal/httpstream"
)

// apiError is an answer of the API that is not a success: its status, a
// code that stays the same across versions (programs test it), and a
// message for people.
type apiError struct {
	status  int
	code    string
	message string
}

func (e apiError) Error() string { return e.code + ": " + e.message }

// The errors whose message does not depend on the call.
var (
	errRate = apiError{http.StatusTooManyRequests, "rate_limited",
		"too many calls from this program: wait for Retry-After seconds"}
	errWriteRate = apiError{http.StatusTooManyRequests, "rate_limited",
		"too many bytes written by this program: wait for Retry-After seconds"}
	errNoStore = apiError{http.StatusServiceUnavailable, "no_store",
		"this agent keeps no store (host-agent run); host-agent serve has one"}
)

// storeError is the API's answer to an error of the store.
func storeError(err error) apiError {
	switch {
	case errors.Is(err, cluster.ErrNoKey):
		return apiError{http.StatusNotFound, "no_such_key", err.Error()}
	case errors.Is(err, cluster.ErrQuota):
		return apiError{http.StatusForbidden, "quota_exceeded", err.Error()}
	case errors.Is(err, cluster.ErrStaleToken):
		return apiError{http.StatusConflict, "stale_token", err.Error()}
	case errors.Is(err, cluster.ErrNoQuorum):
		return apiError{http.StatusServiceUnavailable, "unavailable", err.Error()}
	}
	return apiError{http.StatusInternalServerError, "internal", err.Error()}
}

// writeError answers with e as the guest API's JSON error, the same
// from init and from the agent.
func writeError(w http.ResponseWriter, e apiError) {
	if e.status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "1")
	}
	httpstream.JSONError(w, e.status, e.code, e.message)
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
