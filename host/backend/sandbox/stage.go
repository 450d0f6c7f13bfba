package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// StageArg0 is the argv[0] under which the agent's own binary runs as the
// sandbox's stage (see RunStageIfRequested).
const StageArg0 = "ferry-sandbox-stage"

// The stage's file descriptors, as the backend hands them over.
const (
	stageTransportFD = 3 // the guest's end of the session, passed on to init
	stageControlFD   = 4 // a unix socket: the plan and its mounts arrive, the stage's report goes back
	stageChannelsFD  = 5 // the guest's end of the channel socket, passed on to init
)

// init's file descriptors in the sandbox: its transport (fd:3) and its
// channel socket (ferry.channels=4), over which it passes the ASGI
// workers' data channels to the host.
const (
	initTransportFD = 3
	initChannelsFD  = 4
)

// plan is what the stage builds: the guest's root view, then init.
type plan struct {
	// CodeAt and InitAt are where the program's code and init's binary
	// appear in the guest; both arrive as detached mounts with the plan,
	// like the root filesystem.
	CodeAt string `json:"code_at"`
	// CodeFile, when the code is a single file, is its name under
	// CodeAt: the code's mount is that file's, in a directory of its own.
	CodeFile string   `json:"code_file,omitempty"`
	InitAt   string   `json:"init_at"`
	Args     []string `json:"args"`
	Env      []string `json:"env"`
	// UserNS runs init in a user namespace nested in the stage's.
	UserNS bool `json:"userns"`
	// CodeZip, when set, is where the code's mount (a zip archive, a
	// file) appears; CodeAt is then a writable tmpfs init extracts it
	// into.
	CodeZip string `json:"code_zip,omitempty"`
	// Extra are the data's and the volumes' mounts, in order.
	Extra []extraMount `json:"extra,omitempty"`
}

// extraMount is one mount of the data or a volume in the guest's view.
type extraMount struct {
	Target string `json:"target"`
	// FD is the mount's index among the plan's descriptors after the
	// first planMounts, or -1 for a writable tmpfs.
	FD int `json:"fd"`
	// File says the mount is a single file's (Target is a file).
	File bool `json:"file,omitempty"`
}

// The plan's mounts, in the order they travel with it: detached mounts
// of the root filesystem, the code and init's binary (then those of
// plan.Extra).
const (
	mountRoot = iota
	mountCode
	mountInit
	planMounts
)

// The stage's workspace: a tmpfs it mounts over /tmp in its own mount
// namespace (a place any uid can reach, unlike the agent's directories),
// holding the mount point of the view and the overlay's layers; the guest
// never sees it.
const (
	stageWorkspace = "/tmp"
	stageNewRoot   = stageWorkspace + "/root"
)

// report is the stage's answer to the plan: init is running (its network
// namespace travels with the report), or the error that stopped it.
type report struct {
	Error string `json:"error,omitempty"`
}

// RunStageIfRequested runs the sandbox's stage and never returns when this
// process was started as one (argv[0] is StageArg0); otherwise it returns
// at once. Every binary that starts sandboxes with this package calls it
// first thing in main (test binaries in TestMain): the stage is the
// agent's own binary re-executed inside the sandbox's first namespaces,
// the way container runtimes do it (runc init).
func RunStageIfRequested() {
	if len(os.Args) == 0 || os.Args[0] != StageArg0 {
		return
	}
	os.Exit(runStage())
}

// runStage is the stage: PID 1 of the sandbox's outer PID namespace, in
// its outer user and mount namespaces. It waits for the plan (sent once
// its cgroup is set), builds the root view, starts init in the inner
// namespaces and reports, then stays as init's parent until init ends and
// exits with init's status.
//
// Two levels of namespaces make the view final: the mounts the stage
// makes belong to its user namespace; init's mount namespace is a copy
// owned by a nested user namespace, and the kernel locks every mount of
// such a copy (it cannot be unmounted, nor made writable again). The
// guest's root keeps all its capabilities inside, as in a VM, and still
// cannot undo the view.
func runStage() int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "ferry sandbox: %v\n", err)
		sendReport(stageControlFD, report{Error: err.Error()}, -1)
		return 1
	}
	p, mounts, err := receivePlan(stageControlFD)
	if err != nil {
		return fail(err)
	}
	if err := buildRoot(p, mounts); err != nil {
		return fail(err)
	}
	if err := enterRoot(stageNewRoot); err != nil {
		return fail(err)
	}
	for _, fd := range mounts {
		unix.Close(fd)
	}
	init := initCommand(p)
	if err := init.Start(); err != nil {
		return fail(fmt.Errorf("starting init: %w", err))
	}
	netns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", init.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		init.Process.Kill()
		return fail(fmt.Errorf("init's network namespace: %w", err))
	}
	if err := sendReport(stageControlFD, report{}, netns); err != nil {
		init.Process.Kill()
		return 1
	}
	unix.Close(netns)
	unix.Close(stageControlFD)
	err = init.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			// A PID 1 that powers off ends by a signal (SIGINT, SIGHUP
			// for a reboot): the stage says so with the shell's code.
			return 128 + int(ws.Signal())
		}
		return exit.ExitCode()
	}
	return 1
}

// initCommand is init in the sandbox's inner namespaces: a user namespace
// nested in the stage's (same ids), and fresh mount (a locked copy of the
// view), PID, network, UTS, IPC and cgroup namespaces.
func initCommand(p *plan) *exec.Cmd {
	cmd := &exec.Cmd{Path: p.InitAt, Args: p.Args, Env: p.Env, Dir: "/",
		Stdout: os.Stdout, Stderr: os.Stderr,
		ExtraFiles: []*os.File{os.NewFile(stageTransportFD, "transport"), os.NewFile(stageChannelsFD, "channels")}}
	flags := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWCGROUP)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	if p.UserNS {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: idsPerVM}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: idsPerVM}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
	}
	return cmd
}

// maxPlan bounds the encoding of a plan or a report.
const maxPlan = 64 << 10

// sendPlan sends the plan and its mounts (file descriptors in the order
// of mountRoot…mountInit) as one message on the control socket.
func sendPlan(ctrl int, p *plan, mounts []int) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if len(data) > maxPlan {
		return fmt.Errorf("the sandbox plan is %d bytes, more than %d", len(data), maxPlan)
	}
	if err := unix.Sendmsg(ctrl, data, unix.UnixRights(mounts...), nil, 0); err != nil {
		return fmt.Errorf("sending the plan: %w", err)
	}
	return nil
}

// maxPlanFDs bounds the descriptors of a plan: the first planMounts and
// the extra mounts'.
const maxPlanFDs = planMounts + maxExtraMounts

// maxExtraMounts bounds a program's data and volumes in the sandbox.
const maxExtraMounts = 32

// receivePlan waits for sendPlan's message.
func receivePlan(ctrl int) (*plan, []int, error) {
	var p plan
	fds, err := receive(ctrl, &p, -1)
	if err != nil {
		return nil, nil, fmt.Errorf("waiting for the plan: %w", err)
	}
	want := planMounts
	for _, e := range p.Extra {
		if e.FD >= 0 {
			want++
		}
	}
	if len(fds) != want {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, nil, fmt.Errorf("the plan holds %d file descriptors, want %d", len(fds), want)
	}
	return &p, fds, nil
}

// sendReport sends the stage's report, with init's network namespace
// when netns is not negative.
func sendReport(ctrl int, r report, netns int) error {
	data, _ := json.Marshal(r)
	var rights []byte
	if netns >= 0 {
		rights = unix.UnixRights(netns)
	}
	return unix.Sendmsg(ctrl, data, rights, nil, 0)
}

// receiveReport waits for the stage's report and returns init's network
// namespace.
func receiveReport(ctrl int) (int, error) {
	var r report
	fds, err := receive(ctrl, &r, -1)
	if err != nil {
		return -1, fmt.Errorf("waiting for the stage: %w", err)
	}
	if r.Error != "" {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return -1, errors.New(r.Error)
	}
	if len(fds) != 1 {
		return -1, fmt.Errorf("the stage's report holds %d file descriptors, want 1", len(fds))
	}
	return fds[0], nil
}

// receive reads one message (a JSON document with file descriptors) into
// v; want is the number of descriptors it must hold (-1: any).
func receive(ctrl int, v any, want int) ([]int, error) {
	buf := make([]byte, maxPlan)
	oob := make([]byte, unix.CmsgSpace(4*maxPlanFDs))
	n, oobn, _, _, err := unix.Recvmsg(ctrl, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("the other side went away")
	}
	var fds []int
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return nil, err
		}
		fds = append(fds, got...)
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	if want >= 0 && len(fds) != want {
		closeAll()
		return nil, fmt.Errorf("%d file descriptors, want %d", len(fds), want)
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		closeAll()
		return nil, fmt.Errorf("decoding: %w", err)
	}
	return fds, nil
}

// mountStep is one step of building the root view.
type mountStep struct {
	what string // for errors
	do   func() error
}

// buildRoot assembles the guest's root view on stageNewRoot, in the
// stage's own mount namespace (nothing propagates to the host's):
//
//	/                 a tmpfs with a bind of each entry of the root filesystem (the host's / or
//	                  an image), and new top-level mount points; read-only, nosuid, nodev, recursively
//	/proc             a proc of the sandbox's outer PID namespace (init mounts its own over it)
//	/sys              the host's, read-only: init mounts the sysfs of its own network namespace
//	                  over it (the kernel lets a user namespace mount a sysfs only where a whole
//	                  one is visible)
//	/dev              tmpfs with null, zero, full, random, urandom and tty, a private devpts, /dev/shm
//	/tmp, /var/tmp    tmpfs
//	/run              tmpfs (init's binary at /run/ferry/init)
//	/root             tmpfs, empty (the host's is never visible)
//	/etc              overlay: the root filesystem's /etc below, the guest's writes in tmpfs above
//	/opt/code         the program's code, read-only (on a read-only tmpfs over /opt): the code
//	                  directory, a directory holding only the code file, a squashfs image's
//	                  mount, or a writable tmpfs init extracts a zip archive into (the archive
//	                  at /run/ferry/code.zip)
//	/data, volumes    the data (a squashfs image's mount, or a tmpfs init extracts a zip into)
//	                  and the volumes' filesystems, at their mount points
func buildRoot(p *plan, mounts []int) error {
	r := func(guestPath string) string { return filepath.Join(stageNewRoot, guestPath) }
	const noSuidDev = unix.MS_NOSUID | unix.MS_NODEV
	steps := []mountStep{
		{"making mounts private", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }},
		{"the workspace", func() error {
			if err := unix.Mount("tmpfs", stageWorkspace, "tmpfs", noSuidDev, "mode=0700"); err != nil {
				return err
			}
			return os.Mkdir(stageNewRoot, 0o755)
		}},
		{"the root filesystem", func() error { return rootView(mounts[mountRoot], p) }},
		{"making the root read-only", func() error {
			return unix.MountSetattr(unix.AT_FDCWD, stageNewRoot, unix.AT_RECURSIVE, &unix.MountAttr{
				Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
			})
		}},
		{"/proc", func() error { return unix.Mount("proc", r("/proc"), "proc", noSuidDev|unix.MS_NOEXEC, "") }},
		{"/dev", func() error { return buildDev(r("/dev")) }},
		{"/tmp", func() error { return unix.Mount("tmpfs", r("/tmp"), "tmpfs", noSuidDev, "mode=1777") }},
		{"/var/tmp", func() error {
			if !isDir(r("/var/tmp")) {
				return nil
			}
			return unix.Mount("tmpfs", r("/var/tmp"), "tmpfs", noSuidDev, "mode=1777")
		}},
		{"/run", func() error { return unix.Mount("tmpfs", r("/run"), "tmpfs", noSuidDev, "mode=0755") }},
		{"/root", func() error { return unix.Mount("tmpfs", r("/root"), "tmpfs", noSuidDev, "mode=0700") }},
		{"/etc", func() error { return overlayEtc(stageWorkspace, r("/etc")) }},
		{"the code", func() error {
			// On a tmpfs over /opt: the read-only root has no place for it.
			opt := r(filepath.Dir(p.CodeAt))
			if err := unix.Mount("tmpfs", opt, "tmpfs", noSuidDev, "mode=0755,size=64k"); err != nil {
				return err
			}
			if err := os.Mkdir(r(p.CodeAt), 0o755); err != nil {
				return err
			}
			if p.CodeZip != "" {
				// init extracts the archive into a writable code directory.
				if err := touch(r(p.CodeZip)); err != nil {
					return err
				}
				if err := attach(mounts[mountCode], r(p.CodeZip)); err != nil {
					return err
				}
				return unix.Mount("tmpfs", r(p.CodeAt), "tmpfs", noSuidDev, "mode=0755")
			}
			target := r(p.CodeAt)
			if p.CodeFile != "" {
				target = filepath.Join(target, p.CodeFile)
				if err := touch(target); err != nil {
					return err
				}
			}
			return attach(mounts[mountCode], target)
		}},
		{"init", func() error { // in /run, on the tmpfs mounted above
			if err := touch(r(guestInit)); err != nil {
				return err
			}
			return attach(mounts[mountInit], r(guestInit))
		}},
		{"the data and volumes", func() error { return extraMounts(p, mounts[planMounts:]) }},
		{"sealing /opt", func() error {
			// Nothing else appears beside the code (and volumes under /opt).
			return unix.Mount("", r(filepath.Dir(p.CodeAt)), "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|noSuidDev, "")
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("building the root view: %s: %w", s.what, err)
		}
	}
	return nil
}

// rootView makes the guest's root at stageNewRoot: a tmpfs holding a
// read-only bind of each entry of the root filesystem (symbolic links
// copied), so that mount points the root filesystem lacks (/data, a
// volume's) can be new top-level directories of the view. The whole view
// is made read-only by the next step.
func rootView(root int, p *plan) error {
	host := filepath.Join(stageWorkspace, "host")
	if err := os.Mkdir(host, 0o755); err != nil {
		return err
	}
	if err := attach(root, host); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", stageNewRoot, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=64k"); err != nil {
		return err
	}
	entries, err := os.ReadDir(host)
	if err != nil {
		return err
	}
	for _, e := range entries {
		src, dst := filepath.Join(host, e.Name()), filepath.Join(stageNewRoot, e.Name())
		switch {
		case e.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(src)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			continue
		case e.IsDir():
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
		default:
			if err := touch(dst); err != nil {
				return err
			}
		}
		if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("binding /%s: %w", e.Name(), err)
		}
	}
	for _, e := range p.Extra {
		top, _, _ := strings.Cut(strings.TrimPrefix(e.Target, "/"), "/")
		if _, err := os.Lstat(filepath.Join(stageNewRoot, top)); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(filepath.Join(stageNewRoot, strings.TrimPrefix(e.Target, "/")), 0o755); err != nil {
				return err
			}
		}
	}
	return nil
}

// extraMounts attaches the data's and the volumes' mounts (fds: their
// descriptors, in the order of p.Extra) or mounts writable tmpfs.
func extraMounts(p *plan, fds []int) error {
	next := 0
	for _, e := range p.Extra {
		target := filepath.Join(stageNewRoot, e.Target)
		var err error
		if e.File {
			err = touch(target)
		} else if err = os.MkdirAll(target, 0o755); err != nil {
			err = fmt.Errorf("%s does not exist in the root filesystem, which is read-only: a mount point must exist there, be a new top-level directory, or be under /opt (%w)", e.Target, err)
		}
		if err != nil {
			return err
		}
		if e.FD < 0 {
			if err := unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
				return fmt.Errorf("%s: %w", e.Target, err)
			}
			continue
		}
		if err := attach(fds[next], target); err != nil {
			return fmt.Errorf("%s: %w", e.Target, err)
		}
		next++
	}
	return nil
}

// buildDev mounts a minimal /dev: a tmpfs holding bind mounts of the
// harmless host devices (a user namespace may not create device nodes),
// a private devpts instance and /dev/shm.
func buildDev(dev string) error {
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return err
	}
	for _, name := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if err := bindFile("/dev/"+name, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("devpts: %w", err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("shm: %w", err)
	}
	links := map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	return nil
}

// overlayEtc puts an overlay on etc: the root view's /etc below, a tmpfs
// layer in the workspace above, so init can write hosts, hostname and
// resolv.conf (and the program what it may) without reaching the host.
// The upper layer's root belongs to the guest's root, which makes /etc
// itself writable to it; files of the host stay the host's.
func overlayEtc(workspace, etc string) error {
	upper, work := filepath.Join(workspace, "etc"), filepath.Join(workspace, "etc.work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", etc, upper, work)
	return unix.Mount("overlay", etc, "overlay", unix.MS_NOSUID|unix.MS_NODEV, opts)
}

// attach attaches a detached mount at target.
func attach(mount int, target string) error {
	if err := unix.MoveMount(mount, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// bindFile binds the file src read-only onto a new empty file at dst.
func bindFile(src, dst string) error {
	if err := touch(dst); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %s: %w", src, err)
	}
	return nil
}

// touch creates an empty file (and its directory).
func touch(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// enterRoot makes newRoot the root of this mount namespace and detaches
// the old one, so nothing of the host outside the view stays reachable
// (pivot_root(".", ".") stacks the old root under the new one, and the
// lazy unmount then takes it away).
func enterRoot(newRoot string) error {
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("entering the root view: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	return unix.Chdir("/")
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// userNSRefused reports whether starting a process failed because the
// kernel refused the user namespace (disabled, or a limit reached).
func userNSRefused(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EUSERS)
}
