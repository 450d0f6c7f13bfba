// Package tests holds end-to-end tests that cross binaries: the real
// bin/init as PID 1 of fresh Linux namespaces, driven over the Ferry
// protocol like the host agent drives it.
package tests
