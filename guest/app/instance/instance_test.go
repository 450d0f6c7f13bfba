package instance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/contract"
)

// sshdEnv makes this test binary, started again, a stand-in for sshd: it
// takes sshd's -D -e -p PORT and tells each connection its pid.
const sshdEnv = "FERRY_INSTANCE_TEST_SSHD"

func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv(sshdEnv); ok {
		fakeSSHD(os.Args[1:])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func fakeSSHD(args []string) {
	if len(args) != 4 || args[0] != "-D" || args[1] != "-e" || args[2] != "-p" {
		fmt.Fprintf(os.Stderr, "fake sshd: unexpected arguments %q\n", args)
		os.Exit(2)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake sshd:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "Server listening on 127.0.0.1 port", args[3])
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		fmt.Fprintf(c, "%d\n", os.Getpid())
		c.Close()
	}
}

// freePort returns a loopback TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// pidOn asks the fake sshd on port for its pid; 0 when nothing answers.
func pidOn(port int) int {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	line, _ := bufio.NewReader(c).ReadString('\n')
	pid, _ := strconv.Atoi(line[:max(0, len(line)-1)])
	return pid
}

type lines struct{ ch chan string }

func (l lines) Line(_ string, _ int, line []byte) {
	select {
	case l.ch <- string(line):
	default:
	}
}

func testOptions(t *testing.T) (Options, context.Context) {
	t.Helper()
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Skip("ssh-keygen is not installed (apt-get install openssh-client)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r, err := reaper.New(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go r.Run(ctx)
	port := freePort(t)
	return Options{
		SSHD: self, SSHDArgs: []string{"-p", strconv.Itoa(port)}, Keygen: keygen, Root: t.TempDir(), Port: port,
		Env: []string{sshdEnv + "=1", "PATH=/usr/bin:/bin"}, Reaper: r, Output: lines{make(chan string, 100)},
	}, ctx
}

// Host keys are made at the first start and kept at the next; sshd is
// restarted when it dies, and stopped with the instance.
func TestHostKeysKeptAndSSHDSupervised(t *testing.T) {
	opt, ctx := testOptions(t)
	inst, err := Start(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(opt.Root, "etc/ssh/ssh_host_ed25519_key")
	first, err := os.ReadFile(key)
	if err != nil {
		t.Fatalf("no ed25519 host key after the first start: %v", err)
	}
	if st, err := os.Stat(filepath.Join(opt.Root, "run/sshd")); err != nil || !st.IsDir() {
		t.Fatalf("no privilege separation directory: %v", err)
	}
	pid := pidOn(opt.Port)
	if pid == 0 {
		t.Fatal("sshd does not answer after Start")
	}

	// sshd dies: init starts it again.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p := pidOn(opt.Port); p != 0 && p != pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sshd was not restarted after it was killed")
		}
		time.Sleep(20 * time.Millisecond)
	}

	stop, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := inst.Stop(stop); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if pidOn(opt.Port) != 0 {
		t.Fatal("sshd still answers after Stop")
	}

	// The next boot of a persistent root: the same host key.
	inst, err = Start(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop(context.Background())
	if again, err := os.ReadFile(key); err != nil || string(again) != string(first) {
		t.Fatalf("the host key changed at the second start (%v)", err)
	}
}

// An image without sshd is a configuration error saying what is missing.
func TestNoSSHDIsAClearError(t *testing.T) {
	opt, ctx := testOptions(t)
	opt.SSHD = filepath.Join(t.TempDir(), "sshd")
	_, err := Start(ctx, opt)
	var cerr *contract.ConfigError
	if !errors.As(err, &cerr) || cerr.Phase != contract.PhaseApp || !strings.Contains(cerr.Message, "openssh-server") {
		t.Fatalf("got %v, want an app-phase error naming openssh-server", err)
	}
}
