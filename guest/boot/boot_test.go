package boot

import (
	"strings"
	"testing"
	"time"
)

func TestTimelineIsMonotonicAndReadable(t *testing.T) {
	var tl Timeline
	a := tl.Mark("init")
	time.Sleep(2 * time.Millisecond)
	b := tl.Mark("mounts")
	if a <= 0 || b <= a {
		t.Fatalf("boot times %v then %v", a, b)
	}
	e := tl.Entries()
	if len(e) != 2 || string(e[1].Phase) != "mounts" {
		t.Fatalf("entries %v", e)
	}
	if s := tl.String(); !strings.HasPrefix(s, "init ") || !strings.Contains(s, "mounts +") {
		t.Fatalf("rendered %q", s)
	}
}

func TestMountPoints(t *testing.T) {
	points, err := MountPoints()
	if err != nil {
		t.Skipf("no /proc/self/mountinfo: %v", err)
	}
	if !points["/"] {
		t.Fatalf("/ not among mount points")
	}
}
