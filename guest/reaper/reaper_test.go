package reaper

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startReaper runs a reaper until the test ends.
func startReaper(t *testing.T) *Reaper {
	r, err := New(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Run(ctx)
	return r
}

// The reaper returns the exit status of the process it started, and reaps
// the orphan that process leaves behind.
func TestStatusesAndOrphans(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("needs sh")
	}
	r := startReaper(t)

	// The child prints the pid of a background grandchild, then exits 3
	// while the grandchild still runs: the grandchild becomes our orphan.
	pr, pw, _ := os.Pipe()
	cmd := exec.Command("sh", "-c", "sleep 0.2 & echo $!; exit 3")
	cmd.Stdout = pw
	done, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	pw.Close()
	buf := make([]byte, 64)
	n, _ := pr.Read(buf)
	orphan, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("grandchild pid %q", buf[:n])
	}
	select {
	case exit := <-done:
		if exit.Code() != 3 {
			t.Fatalf("exit %v, want status 3", exit)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit status")
	}
	// The orphan must not linger as a zombie.
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(orphan) + "/stat")
		if err != nil {
			break // gone: reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped: %s", orphan, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r.Orphans() < 1 {
		t.Fatalf("reaper counted %d orphans", r.Orphans())
	}
}

func TestKilledProcessCode(t *testing.T) {
	r := startReaper(t)
	cmd := exec.Command("sleep", "30")
	done, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	if exit := <-done; exit.Code() != 128+9 || !strings.Contains(exit.String(), "killed") {
		t.Fatalf("exit %v code %d", exit, exit.Code())
	}
}
