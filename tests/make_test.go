package tests

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// makeGoEnv runs `make goenv` with only env (no PATH to Go, no Go
// variables: a fresh root shell) and returns its variables.
func makeGoEnv(t *testing.T, env ...string) map[string]string {
	t.Helper()
	cmd := exec.Command("make", "-s", "-C", "..", "goenv")
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + os.Getenv("HOME")}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make goenv: %v\n%s", err, out)
	}
	vars := map[string]string{}
	names := []string{"GOROOT", "GOPATH", "GOCACHE", "GOMODCACHE", "GOENV", "GOTELEMETRYDIR"}
	i := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if v, ok := strings.CutPrefix(line, "go="); ok {
			vars["go"] = v
		} else if v, ok := strings.CutPrefix(line, "env="); ok && i < len(names) {
			vars[names[i]] = v
			i++
		}
	}
	return vars
}

// make test finds Go in /usr/local/go on a fresh machine's PATH, and as
// root keeps Go's writes (caches, modules, telemetry) out of /root, which
// the host-state check requires; a variable the caller sets wins.
func TestMakeFindsGoAndKeepsItsCachesOutOfRoot(t *testing.T) {
	requireRoot(t)
	requireTool(t, "make")
	if _, err := os.Stat("/usr/local/go/bin/go"); err != nil {
		t.Skip("no Go in /usr/local/go, where the README installs it")
	}
	vars := makeGoEnv(t)
	if vars["go"] != "/usr/local/go/bin/go" {
		t.Errorf("make used Go %q, want /usr/local/go/bin/go", vars["go"])
	}
	for _, name := range []string{"GOPATH", "GOCACHE", "GOMODCACHE", "GOTELEMETRYDIR"} {
		if v := vars[name]; v == "" || strings.HasPrefix(v, "/root") {
			t.Errorf("%s=%q: Go would write under /root", name, v)
		}
	}
	if vars["GOENV"] != os.Getenv("HOME")+"/.config/go/env" {
		t.Errorf("GOENV=%q: Go's settings file (read, not written) moved", vars["GOENV"])
	}
	if got := makeGoEnv(t, "GOCACHE=/var/cache/ferry-test-cache")["GOCACHE"]; got != "/var/cache/ferry-test-cache" {
		t.Errorf("the caller's GOCACHE lost: %q", got)
	}
}
