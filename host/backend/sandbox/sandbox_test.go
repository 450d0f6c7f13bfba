package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/host/backend"
)

// TestMain lets this test binary be the sandbox's stage, and its "init":
// started as init (argv[0] "init"), it reports what it sees from inside
// the sandbox on the transport (fd 3) and exits.
func TestMain(m *testing.M) {
	RunStageIfRequested()
	if len(os.Args) > 0 && os.Args[0] == "init" {
		os.Exit(probeFromInside())
	}
	os.Exit(m.Run())
}

// inside is what the fake init reports.
type inside struct {
	PID, UID              int
	Env                   []string
	WriteUsr, WriteEtc    string
	WriteRoot, ReadShadow string
	RemountRW, UnmountTmp string
	BindRoot              string // a second view of its own root: allowed, but it stays read-only
	BindRW, WriteThrough  string
	RootEntries           []string
	Code                  string
	CodeEntries           []string // what /opt/code holds
	WriteCode             string   // creating a file beside the code
	Cwd                   string
	Fill                  string // writing 64 MiB to /scratch, when the code has a file "fill"
}

// probeFromInside tries what a hostile guest would and reports it.
func probeFromInside() int {
	errText := func(err error) string {
		if err == nil {
			return "ok"
		}
		return err.Error()
	}
	write := func(path string) string { return errText(os.WriteFile(path, []byte("x"), 0o644)) }
	var r inside
	r.PID, r.UID, r.Env = os.Getpid(), os.Getuid(), os.Environ()
	r.WriteUsr, r.WriteEtc, r.WriteRoot = write("/usr/ferry-sandbox-test"), write("/etc/ferry-sandbox-test"), write("/root/ferry-sandbox-test")
	_, err := os.ReadFile("/etc/shadow")
	r.ReadShadow = errText(err)
	r.RemountRW = errText(unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND, ""))
	r.UnmountTmp = errText(unix.Unmount("/tmp", unix.MNT_DETACH))
	os.MkdirAll("/run/probe", 0o755)
	r.BindRoot = errText(unix.Mount("/", "/run/probe", "", unix.MS_BIND|unix.MS_REC, ""))
	r.BindRW = errText(unix.Mount("", "/run/probe", "", unix.MS_REMOUNT|unix.MS_BIND, ""))
	r.WriteThrough = write("/run/probe/usr/ferry-sandbox-test")
	if entries, err := os.ReadDir("/root"); err == nil {
		for _, e := range entries {
			r.RootEntries = append(r.RootEntries, e.Name())
		}
	}
	code, err := os.ReadFile(filepath.Join(guestCodeDir, "marker"))
	r.Code = string(code) + errText(err)
	if entries, err := os.ReadDir(guestCodeDir); err == nil {
		for _, e := range entries {
			r.CodeEntries = append(r.CodeEntries, e.Name())
		}
	}
	r.WriteCode = write(filepath.Join(guestCodeDir, "added"))
	r.Cwd, _ = os.Getwd()
	_, err = os.Stat(filepath.Join(guestCodeDir, "fill"))
	hold := err == nil
	if hold {
		r.Fill = errText(fillFile("/scratch/fill", 64<<20))
	}
	transport := os.NewFile(stageTransportFD, "transport")
	json.NewEncoder(transport).Encode(r)
	if hold { // until the host ends the sandbox
		io.Copy(io.Discard, transport)
	}
	return 0
}

// fillFile writes size bytes to path and syncs them.
func fillFile(path string, size int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for written := 0; written < size; written += len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			return err
		}
	}
	return f.Sync()
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the sandbox's namespaces need root")
	}
}

// The guest is root only inside: an unprivileged host uid with a
// read-only root view it cannot remount or unmount, its own /etc and
// /root, the code readable though only root may read it on the host, and
// none of the agent's environment.
func TestSandboxIsolation(t *testing.T) {
	requireRoot(t)
	code := t.TempDir() // 0700, owned by the host's root
	if err := os.WriteFile(filepath.Join(code, "marker"), []byte("the code"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FERRY_ADMIN_TOKEN", "secret-of-the-agent")
	r := probe(t, backend.Spec{ProgramID: "probe", InitPath: os.Args[0], CodePath: code, MemoryMiB: 64})
	if r.PID != 1 || r.UID != 0 {
		t.Errorf("init is pid %d uid %d inside, want pid 1 uid 0", r.PID, r.UID)
	}
	if r.WriteUsr == "ok" || r.ReadShadow == "ok" || r.RemountRW == "ok" || r.UnmountTmp == "ok" || r.BindRW == "ok" || r.WriteThrough == "ok" {
		t.Errorf("the guest may write /usr (%s), read /etc/shadow (%s), remount / read-write (%s), unmount /tmp (%s), "+
			"or make a bind of / (%s) writable (%s, write: %s)",
			r.WriteUsr, r.ReadShadow, r.RemountRW, r.UnmountTmp, r.BindRoot, r.BindRW, r.WriteThrough)
	}
	if r.WriteEtc != "ok" || r.WriteRoot != "ok" {
		t.Errorf("the guest's own /etc (%s) and /root (%s) are not writable", r.WriteEtc, r.WriteRoot)
	}
	for _, p := range []string{"/etc/ferry-sandbox-test", "/root/ferry-sandbox-test", "/usr/ferry-sandbox-test"} {
		if _, err := os.Stat(p); err == nil {
			os.Remove(p)
			t.Errorf("the guest's write reached the host's %s", p)
		}
	}
	if len(r.RootEntries) != 1 || r.RootEntries[0] != "ferry-sandbox-test" {
		t.Errorf("the guest's /root holds %v, want only its own file", r.RootEntries)
	}
	if r.Code != "the code"+"ok" || r.Cwd != "/" {
		t.Errorf("code %q, working directory %q", r.Code, r.Cwd)
	}
	for _, kv := range r.Env {
		if strings.HasPrefix(kv, "FERRY_ADMIN_TOKEN") {
			t.Errorf("the agent's environment reached the guest: %s", kv)
		}
	}
}

// probe starts a sandbox whose init is this test binary's probe and
// returns what it saw from inside, once the sandbox has ended.
func probe(t *testing.T, spec backend.Spec) inside {
	t.Helper()
	b := New(nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := b.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	raw, err := io.ReadAll(vm.Conn())
	if err != nil {
		t.Fatal(err)
	}
	var r inside
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("report %q: %v (%v)", raw, err, vm.Err())
	}
	t.Logf("from inside: %+v", r)
	select {
	case <-vm.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the sandbox did not end after init exited")
	}
	var exit interface{ ExitCode() int }
	if err := vm.Err(); err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 0) {
		t.Errorf("the sandbox ended with %v", err)
	}
	return r
}

// Code that is a single file appears alone in the guest's code directory,
// under the name the spec gives it; its neighbours on the host stay out,
// and nothing can be added beside it.
func TestSandboxSingleFileCode(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app-source.py"), []byte("the code"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "neighbour"), []byte("not the code"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := probe(t, backend.Spec{ProgramID: "probe", InitPath: os.Args[0], CodePath: filepath.Join(dir, "app-source.py"), CodeFile: "marker", MemoryMiB: 64})
	if r.Code != "the code"+"ok" || len(r.CodeEntries) != 1 || r.CodeEntries[0] != "marker" {
		t.Errorf("code %q, code directory %v; want only marker with the file's content", r.Code, r.CodeEntries)
	}
	if r.WriteCode == "ok" {
		t.Error("the guest could add a file beside its code")
	}
}

// A plan for a root that does not exist is a clear error, and nothing is
// left running.
func TestSandboxBadRootIsAnError(t *testing.T) {
	requireRoot(t)
	b := New(nil)
	b.RootDir = filepath.Join(t.TempDir(), "no-such-root")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := b.Start(ctx, backend.Spec{ProgramID: "bad", InitPath: os.Args[0], CodePath: t.TempDir()})
	if err == nil {
		vm.Kill()
		t.Fatal("a sandbox started on a root that does not exist")
	}
	if !strings.Contains(err.Error(), "no-such-root") {
		t.Errorf("the error does not name the root: %v", err)
	}
	if b.slots().InUse() != 0 {
		t.Errorf("VM slots still taken after a failed start: %d", b.slots().InUse())
	}
}

// An instance (its own image, sshd, a persistent root) is refused with a
// clear error: the sandbox shows the guest the host's root.
func TestSandboxRefusesInstances(t *testing.T) {
	b := New(nil)
	for _, spec := range []backend.Spec{{ProgramID: "box", InitPath: os.Args[0], Instance: true}, {ProgramID: "box", InitPath: os.Args[0], RootSizeMiB: 64}} {
		vm, err := b.Start(context.Background(), spec)
		if err == nil {
			vm.Kill()
			t.Fatal("the sandbox started an instance")
		}
		if !strings.Contains(err.Error(), "runs no instances") || !strings.Contains(err.Error(), "qemu") {
			t.Errorf("the error does not say to use the qemu backend: %v", err)
		}
	}
}

func TestAgentAlive(t *testing.T) {
	for text, want := range map[string]bool{
		"1":                       true,  // init: alive
		"not-a-pid":               true,  // not ours
		"0":                       true,  // not a pid of ours
		"999999999":               false, // no such process
		strconv.Itoa(os.Getpid()): false, // an earlier process with our pid
	} {
		if got := agentAlive(text); got != want {
			t.Errorf("agentAlive(%q) = %v, want %v", text, got, want)
		}
	}
}

// Volumes beyond the disk's free space are refused before the sandbox is
// made or any image created; an existing persistent volume is reused
// without counting.
func TestSandboxRefusesVolumesBeyondTheFreeSpace(t *testing.T) {
	requireRoot(t)
	b := New(nil)
	b.VolumeDir = filepath.Join(t.TempDir(), "volumes")
	b.Space = func(string) (backend.FSSpace, error) {
		return backend.FSSpace{Dev: 1, Avail: 300 << 20, Total: 1 << 30}, nil // 51 MiB reserve: 249 MiB for volumes
	}
	spec := backend.Spec{ProgramID: "box", InitPath: os.Args[0], CodePath: t.TempDir(), Volumes: []backend.Volume{
		{Mount: "/state", Persistent: true, Name: "state", SizeMiB: 200},
		{Mount: "/scratch", Ephemeral: true, SizeMiB: 100},
	}}
	vm, err := b.Start(context.Background(), spec)
	var serr *backend.SpaceError
	if !errors.As(err, &serr) {
		if err == nil {
			vm.Kill()
		}
		t.Fatalf("Start: %v, want a SpaceError", err)
	}
	if !strings.Contains(err.Error(), "persistent volumes[0] (/state) of 200 MiB and ephemeral volumes[1] (/scratch) of 100 MiB, 300 MiB together, do not fit") {
		t.Errorf("the error does not name the volumes: %v", err)
	}
	if _, err := os.Stat(b.VolumeDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused boot made its volumes' directory: %v", err)
	}
	if b.slots().InUse() != 0 {
		t.Errorf("VM slots taken after a refused start: %d", b.slots().InUse())
	}
	image := backend.PersistentImage(filepath.Join(b.VolumeDir, "box"), "state")
	os.MkdirAll(filepath.Dir(image), 0o700)
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.CheckSpace(spec); err != nil {
		t.Errorf("with the persistent volume made: %v", err)
	}
}

// The volumes of a running sandbox keep their space promised: a second
// program cannot take what the first one's sparse ephemeral image has
// not written yet (statfs alone would let it), what the first one writes
// is counted once (by statfs), and the space comes back when it ends.
func TestSandboxVolumesOfRunningVMsKeepTheirSpace(t *testing.T) {
	requireRoot(t)
	b := New(nil)
	b.VolumeDir = filepath.Join(t.TempDir(), "volumes")
	b.Space = func(string) (backend.FSSpace, error) {
		return backend.FSSpace{Dev: 1, Avail: 300 << 20, Total: 1 << 30}, nil // 51 MiB reserve: 249 MiB for volumes
	}
	code := t.TempDir()
	if err := os.WriteFile(filepath.Join(code, "fill"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := b.Start(ctx, backend.Spec{ProgramID: "first", InitPath: os.Args[0], CodePath: code, MemoryMiB: 128,
		Volumes: []backend.Volume{{Mount: "/scratch", Ephemeral: true, SizeMiB: 200}}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	var r inside
	if err := json.NewDecoder(vm.Conn()).Decode(&r); err != nil || r.Fill != "ok" {
		vm.Kill()
		<-vm.Done()
		t.Fatalf("the guest filling its volume: %+v, %v (the sandbox: %v)", r, err, vm.Err())
	}
	second := func(mib int) error {
		return b.CheckSpace(backend.Spec{ProgramID: "second", Volumes: []backend.Volume{{Mount: "/scratch", Ephemeral: true, SizeMiB: mib}}})
	}
	// The first owes 200 MiB less what it wrote (64 MiB, and mkfs's
	// metadata): 249 - 136 leaves at most 113 MiB.
	err = second(150)
	var serr *backend.SpaceError
	if !errors.As(err, &serr) || serr.Promised == 0 || serr.Promised > 136<<20 || !strings.Contains(err.Error(), "promised to the volumes of running VMs") {
		t.Fatalf("150 MiB beside the running 200 MiB volume: %v, want a SpaceError with at most 136 MiB promised", err)
	}
	if err := second(100); err != nil {
		t.Errorf("100 MiB beside the running volume, of which 64 MiB are written: %v", err)
	}
	vm.Kill()
	select {
	case <-vm.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the sandbox did not end")
	}
	if err := second(240); err != nil {
		t.Errorf("once the first has ended: %v", err)
	}
}
