// Package asgi runs Python ASGI apps for init: a pool of worker processes,
// each running the embedded worker.py, which speaks the Ferry protocol to
// init over a unix socket pair and drives the app with complete ASGI 3
// scopes (http with streamed bodies, websocket, lifespan). init relays each
// host stream to the least busy worker, restarts crashed workers with
// backoff and resets only the streams the crashed worker held.
package asgi

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

//go:embed worker.py
var workerScript []byte

// WriteWorkerScript writes worker.py into a new directory under dir (a
// tmpfs in the guest) and returns its path. init's pool runs it; so does
// ferry-bench's event-loop prototype (bench/epollfront).
func WriteWorkerScript(dir string) (string, error) {
	d, err := os.MkdirTemp(dir, "ferry-asgi-")
	if err != nil {
		return "", fmt.Errorf("worker script: %w", err)
	}
	path := filepath.Join(d, "ferry_worker.py")
	if err := os.WriteFile(path, workerScript, 0o644); err != nil {
		return "", fmt.Errorf("worker script: %w", err)
	}
	return path, nil
}
