package bench

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// Machine is what the results were measured on.
type Machine struct {
	Cores    int
	Model    string
	Kernel   string
	MemTotal string
	Go       string
	Python   string // interpreter and the versions of the Python packages used
	Wrk      string
	Nginx    string
}

// DescribeMachine collects the facts printed with the results.
func DescribeMachine(ctx context.Context, python, nginx string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.Model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if v, err := statusField(b, "MemTotal"); err == nil {
			m.MemTotal = formatKiB(v)
		}
	}
	m.Python = commandLine(ctx, python, "-c", `import sys, uvicorn, fastapi, starlette, uvloop, httptools, msgpack
print("Python %s, uvicorn %s, httptools %s, uvloop %s, FastAPI %s, Starlette %s, msgpack %s" % (sys.version.split()[0],
    uvicorn.__version__, httptools.__version__, uvloop.__version__, fastapi.__version__, starlette.__version__,
    ".".join(map(str, msgpack.version))))`)
	m.Wrk, _, _ = strings.Cut(commandLine(ctx, "wrk", "-v"), " Copyright")
	m.Nginx = strings.TrimPrefix(commandLine(ctx, nginx, "-v"), "nginx version: ")
	return m
}

// commandLine returns the first line a command prints (wrk -v exits 1).
func commandLine(ctx context.Context, name string, args ...string) string {
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}
