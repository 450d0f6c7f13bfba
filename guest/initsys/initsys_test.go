package initsys

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/guest/boot"
	"github.com/ferry-vm/ferry/guest/setup"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// logFile is a log destination for init's goroutines, read back whole.
type logFile struct{ *os.File }

func newLogFile(t *testing.T) logFile {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "init.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return logFile{f}
}

func (l logFile) String() string {
	b, _ := os.ReadFile(l.Name())
	return string(b)
}

func TestLoad(t *testing.T) {
	vsock := contract.Transport{Kind: contract.TransportVsock, Port: contract.DefaultVsockPort}
	unixAt := func(p string) contract.Transport { return contract.Transport{Kind: contract.TransportUnix, Path: p} }
	for _, tc := range []struct {
		name      string
		opt       Options
		err       string // by hand, a bad flag is an error
		transport contract.Transport
		debug     bool
		logged    string
	}{
		{"defaults", Options{}, "", vsock, false, ""},
		{"the command line", Options{Cmdline: "quiet ferry.transport=unix:/run/a.sock ferry.debug=1"}, "", unixAt("/run/a.sock"), true, ""},
		{"-transport wins", Options{Cmdline: "ferry.transport=unix:/run/a.sock", Transport: "unix:/run/b.sock"}, "", unixAt("/run/b.sock"), false, ""},
		{"-debug", Options{Debug: true}, "", vsock, true, ""},
		{"a bad parameter keeps its default", Options{Cmdline: "ferry.transport=carrier-pigeon"}, "", vsock, false, "ignoring kernel parameter"},
		{"a bad -transport by hand is an error", Options{Transport: "carrier-pigeon"}, "-transport", vsock, false, ""},
		{"a bad -transport as PID 1 is logged", Options{PID1: true, Cmdline: "ferry.transport=unix:/run/a.sock", Transport: "carrier-pigeon"}, "", unixAt("/run/a.sock"), false, "ignoring a bad flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := newLogFile(t)
			tc.opt.Stderr = logs
			tc.opt.Agent = "test"
			var tl boot.Timeline
			in, err := Load(tc.opt, &tl)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if in.Params.Transport != tc.transport {
				t.Errorf("transport %v, want %v", in.Params.Transport, tc.transport)
			}
			if got := in.Log.Enabled(context.Background(), slog.LevelDebug); got != tc.debug {
				t.Errorf("debug logs %v, want %v", got, tc.debug)
			}
			if in.PID1 != tc.opt.PID1 || in.Cmdline != tc.opt.Cmdline || in.Timeline != &tl || in.Agent != "test" {
				t.Errorf("loaded %+v", in)
			}
			if tc.logged != "" && !strings.Contains(logs.String(), tc.logged) {
				t.Errorf("logs %q, want %q", logs.String(), tc.logged)
			}
		})
	}
}

func TestModules(t *testing.T) {
	base := []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "squashfs", "overlay", "ext4"}
	for _, tc := range []struct {
		kind string
		want []string
	}{
		{contract.TransportVsock, append(base[:len(base):len(base)], "vmw_vsock_virtio_transport")},
		{contract.TransportSerial, append(base[:len(base):len(base)], "virtio_console")},
		{contract.TransportFD, base},
		{contract.TransportUnix, base},
	} {
		if got := Modules(contract.Transport{Kind: tc.kind}); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.kind, got, tc.want)
		}
	}
}

func TestMaxProcs(t *testing.T) {
	for ncpu, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 8: 4, 64: 32} {
		if got := maxProcs(ncpu); got != want {
			t.Errorf("%d CPUs: %d, want %d", ncpu, got, want)
		}
	}
}

// As PID 1 setup writes to the VM's paths; by hand under a new scratch
// directory.
func TestSetupPaths(t *testing.T) {
	in := &Init{PID1: true}
	if p, err := in.setupPaths(); err != nil || p != setup.DefaultPaths {
		t.Fatalf("PID 1: %+v, %v", p, err)
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	in.PID1 = false
	p, err := in.setupPaths()
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(p.Root) != tmp || !strings.HasPrefix(filepath.Base(p.Root), "ferry-init-") ||
		p.Code != filepath.Join(p.Root, "code") || p.Data != filepath.Join(p.Root, "data") || p.DevRoot != "/dev" {
		t.Fatalf("by hand: %+v", p)
	}
	if st, err := os.Stat(p.Root); err != nil || !st.IsDir() {
		t.Fatalf("scratch directory: %v", err)
	}
}

// init run by hand removes its scratch directory when it stops, but
// never while something is mounted under it: the removal would reach
// into what is mounted there.
func TestTheScratchDirectoryGoesUnlessSomethingIsMountedUnderIt(t *testing.T) {
	in := &Init{Log: slog.New(slog.DiscardHandler)}
	scratch := func() string {
		dir, err := os.MkdirTemp(t.TempDir(), "ferry-init-")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "data", "volume"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "data", "state"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}

	dir := scratch()
	in.removeScratch(dir)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("scratch directory still there after init stopped: %v", err)
	}

	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs under a scratch directory (CI runs tests as root)")
	}
	dir = scratch()
	volume := filepath.Join(dir, "data", "volume")
	if err := unix.Mount("tmpfs", volume, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(volume, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", volume, err)
		}
	})
	kept := filepath.Join(volume, "kept")
	if err := os.WriteFile(kept, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	in.removeScratch(dir)
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("a file on the mount under the scratch directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "state")); err != nil {
		t.Fatalf("the scratch directory was emptied with a mount under it: %v", err)
	}
}

// The initramfs stage's timeline, handed over in the environment, comes
// before this process's; the variable is not passed on to the program.
func TestResumeTimeline(t *testing.T) {
	earlier := []message.TimelineEntry{{Phase: []byte("kernel"), BootNano: 1}, {Phase: []byte("initramfs"), BootNano: 2}}
	t.Setenv(boot.TimelineEnv, boot.EncodeTimeline(earlier))
	var tl boot.Timeline
	tl.Mark("kernel")
	in := &Init{Timeline: &tl, Log: slog.New(slog.DiscardHandler)}
	in.ResumeTimeline()
	var phases []string
	for _, e := range tl.Entries() {
		phases = append(phases, string(e.Phase))
	}
	if !reflect.DeepEqual(phases, []string{"kernel", "initramfs", "switch"}) {
		t.Fatalf("phases %v", phases)
	}
	if _, ok := os.LookupEnv(boot.TimelineEnv); ok {
		t.Fatal("the timeline variable is still set")
	}
	// Without one, the timeline stays this process's.
	in.ResumeTimeline()
	if n := len(tl.Entries()); n != 3 {
		t.Fatalf("%d entries", n)
	}
}

// runByHand starts Run as init by hand, listening on a unix socket, and
// returns the socket's path, init's logs and Run's exit code to come.
func runByHand(t *testing.T, shutdown context.Context) (string, logFile, <-chan int) {
	t.Helper()
	t.Setenv("TMPDIR", t.TempDir())
	sock := filepath.Join(t.TempDir(), "init.sock")
	logs := newLogFile(t)
	var tl boot.Timeline
	in, err := Load(Options{Transport: "unix:" + sock, Stderr: logs, Agent: "test-init"}, &tl)
	if err != nil {
		t.Fatal(err)
	}
	code := make(chan int, 1)
	go func() { code <- in.Run(shutdown) }()
	return sock, logs, code
}

// dialInit connects to init's socket and completes the handshake.
func dialInit(t *testing.T, sock string, cfg mux.Config) *mux.Session {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			sess := mux.Client(conn, cfg)
			t.Cleanup(func() { sess.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			peer, err := sess.Handshake(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if string(peer.Agent) != "test-init" {
				t.Fatalf("init introduced itself as %q", peer.Agent)
			}
			return sess
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitCode(t *testing.T, code <-chan int) int {
	t.Helper()
	select {
	case c := <-code:
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
		return 0
	}
}

// By hand, init serves the host on its transport, answers a configuration
// that fails validation with a structured error, and stops when the host
// sends GOAWAY.
func TestRunByHandServesUntilGoAway(t *testing.T) {
	sock, logs, code := runByHand(t, context.Background())
	results := make(chan message.ConfigResult, 1)
	sess := dialInit(t, sock, mux.Config{OnControl: func(ft frame.Type, p []byte) {
		if ft == frame.TypeConfigResult {
			var r message.ConfigResult
			if r.Unmarshal(append([]byte(nil), p...)) == nil {
				results <- r
			}
		}
	}})
	if err := sess.SendControl(frame.TypeConfig, []byte(`{"program_id": "p", "interface": "telepathy"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-results:
		if r.OK || len(r.Phase) == 0 || len(r.Message) == 0 {
			t.Fatalf("result %+v, want a structured error", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no CONFIG_RESULT")
	}
	if err := sess.GoAway(frame.CodeNoError, "done"); err != nil {
		t.Fatal(err)
	}
	if c := waitCode(t, code); c != 0 {
		t.Fatalf("exit code %d\n%s", c, logs)
	}
	for _, want := range []string{"listening for the host", "reason=\"host sent GOAWAY\"", "msg=stopped"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// The shutdown context (main's SIGTERM and SIGINT) stops init too, with
// its cause in the log.
func TestRunByHandStopsWhenShutdownEnds(t *testing.T) {
	shutdown, stop := context.WithCancelCause(context.Background())
	sock, logs, code := runByHand(t, shutdown)
	dialInit(t, sock, mux.Config{})
	stop(errors.New("terminated signal received"))
	if c := waitCode(t, code); c != 0 {
		t.Fatalf("exit code %d\n%s", c, logs)
	}
	if !strings.Contains(logs.String(), `reason="terminated signal received"`) {
		t.Fatalf("logs:\n%s", logs)
	}
}

// By hand, a transport that cannot be opened ends init with code 1.
func TestRunByHandWithoutTransport(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	logs := newLogFile(t)
	in, err := Load(Options{Transport: "unix:" + filepath.Join(notADir, "init.sock"), Stderr: logs}, &boot.Timeline{})
	if err != nil {
		t.Fatal(err)
	}
	code := make(chan int, 1)
	go func() { code <- in.Run(context.Background()) }()
	if c := waitCode(t, code); c != 1 {
		t.Fatalf("exit code %d\n%s", c, logs)
	}
	if !strings.Contains(logs.String(), "cannot open the host transport") {
		t.Fatalf("logs:\n%s", logs)
	}
}
