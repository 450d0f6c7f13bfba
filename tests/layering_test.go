package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// module is the repository's Go module path.
const module = "github.com/ferry-vm/ferry"

// Neither side of the contract depends on the other: nothing the agent is
// built from is a guest package, and nothing init is built from is a host
// package. What both need lives in protocol/ (protocol/contract above all)
// or internal/.
func TestHostAndGuestDoNotDependOnEachOther(t *testing.T) {
	cases := []struct {
		side      string
		packages  []string
		forbidden string
	}{
		{"the host", []string{"./host/...", "./cmd/host-agent"}, module + "/guest"},
		{"the guest", []string{"./guest/...", "./cmd/init"}, module + "/host"},
	}
	for _, c := range cases {
		t.Run(c.side, func(t *testing.T) {
			forbidden := func(pkg string) bool { return pkg == c.forbidden || strings.HasPrefix(pkg, c.forbidden+"/") }
			// Each dependency with its direct imports, to name the package
			// that brings a forbidden one in.
			args := append([]string{"list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}"}, c.packages...)
			cmd := exec.Command("go", args...)
			cmd.Dir = ".."
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list: %v\n%s", err, errText(err))
			}
			deps := 0
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				fields := strings.Fields(line)
				deps++
				if forbidden(fields[0]) {
					t.Errorf("%s depends on %s", c.side, fields[0])
				}
				for _, imp := range fields[1:] {
					if forbidden(imp) && !forbidden(fields[0]) {
						t.Errorf("%s imports %s", fields[0], imp)
					}
				}
			}
			if deps < 20 {
				t.Fatalf("go list named only %d packages for %v:\n%s", deps, c.packages, out)
			}
		})
	}
}

// errText is what a failed command wrote on stderr.
func errText(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
