package tests

import (
	"context"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/syncbuf"
)

// The colours of the page's charts (host/statuspage/status.html): the
// waterfall's bars and the histogram's.
var (
	waterfallBlue    = [3]uint8{0x1f, 0x6f, 0xeb}
	histogramPurple  = [3]uint8{0x82, 0x50, 0xdf}
	chromiumPatience = 2 * time.Minute
)

// The status page, loaded by a real browser (headless Chromium, from
// Debian's chromium package): it lists the programs and draws the running
// VM's boot waterfall and cold-start histogram (their pixels are counted
// on the screenshot, which is kept as an artifact), with the recent
// requests and the 404's warning carrying its request id.
func TestStatusPageInChromium(t *testing.T) {
	requirePythonModules(t, "json")
	requireTool(t, "curl")
	chromium := requireTool(t, "chromium")
	config := asgiPrograms(writeApp(t, map[string]string{"main.py": scopeApp}), "talk", "quiet")
	adminAddr := freePort(t)
	agent := serveAgent(t, config, agentOptions{}, "--admin", adminAddr, "--admin-token", "s3cret")
	curl(t, "http://"+agent.addr+"/vm/talk/hello")
	curl(t, "-H", "X-Request-Id: lost-request-1", "http://"+agent.addr+"/vm/nowhere/")

	url := "http://ferry:s3cret@" + adminAddr + "/status"
	dom := runChromium(t, chromium, "--dump-dom", url)
	for _, want := range []string{
		`<tr class="program" data-program="talk">`, `<tr class="program" data-program="quiet">`,
		`<div class="waterfall" data-program="talk">`, `data-phase="kernel"`, `<div class="phase" data-phase="app">`,
		`<div class="histogram" data-program="talk">`,
		`/hello`, `no such program`, `lost-request-1`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page in Chromium lacks %s", want)
		}
	}
	if strings.Contains(dom, `<div class="vm" data-program="quiet">`) {
		t.Error("a VM is drawn for a program that does not run")
	}

	dir := artifactDir(t)
	shot := filepath.Join(dir, "statuspage.png")
	runChromium(t, chromium, "--screenshot="+shot, "--window-size=1280,1000", "--hide-scrollbars", url)
	t.Logf("screenshot of the status page: %s", shot)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("Chromium made no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	// The waterfall's bars and the histogram's are drawn: a few hundred
	// pixels of each colour at least (a 3-pixel bar of 14 rows is 42).
	if n := countPixels(img, waterfallBlue); n < 100 {
		t.Errorf("the waterfall's bars cover %d pixels of the screenshot", n)
	}
	if n := countPixels(img, histogramPurple); n < 100 {
		t.Errorf("the histogram's bars cover %d pixels of the screenshot", n)
	}
}

// runChromium runs headless Chromium with args and returns its output.
// It runs as root without its sandbox, with its profile, cache and home
// in a temporary directory (never /root's), and is killed with its
// children if it outlasts chromiumPatience.
func runChromium(t *testing.T, chromium string, args ...string) string {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), chromiumPatience)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-dev-shm-usage", "--user-data-dir=" + filepath.Join(home, "profile"), "--crash-dumps-dir=" + filepath.Join(home, "crashes")}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, "config"), "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // what it left behind
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// artifactDir is where a test keeps what it produced for people to look
// at: $FERRY_ARTIFACTS, or build/artifacts in the repository.
func artifactDir(t *testing.T) string {
	dir := os.Getenv("FERRY_ARTIFACTS")
	if dir == "" {
		dir, _ = filepath.Abs("../build/artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// countPixels counts the pixels of img of colour c, give or take a little
// (antialiasing).
func countPixels(img image.Image, c [3]uint8) int {
	near := func(a uint32, b uint8) bool { d := int(a>>8) - int(b); return d > -6 && d < 6 }
	n := 0
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if near(r, c[0]) && near(g, c[1]) && near(b, c[2]) {
				n++
			}
		}
	}
	return n
}
