package asgi

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// countApp reads a request's body chunk by chunk and answers its length.
const countApp = `async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})
`

// upload sends body on a new stream of sess and returns the answer.
func upload(ctx context.Context, sess *mux.Session, body []byte) (string, error) {
	st, err := sess.Open(ctx, &message.RequestHead{Method: []byte("POST"), Path: []byte("/upload"), Scheme: []byte("http")}, nil, false)
	if err != nil {
		return "", err
	}
	if _, err := st.Write(body); err != nil {
		return "", err
	}
	if err := st.CloseWrite(); err != nil {
		return "", err
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		return "", err
	}
	b, err := io.ReadAll(st)
	return string(b), err
}

// minorFaults returns a process's minor page faults so far (proc(5),
// /proc/pid/stat field 10).
func minorFaults(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command, whose name may hold spaces: state is
	// field 3, minflt field 10.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n, err := strconv.Atoi(fields[10-3])
	if err != nil {
		t.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return n
}

// A worker reuses its memory from one request body to the next: the
// pieces a 10 MiB upload arrives in (up to 256 KiB each) come from the C
// heap it keeps, not from pages new to the process. With glibc's default
// thresholds each piece was mapped afresh and the worker took 575 to 621
// page faults an upload, half its CPU time (worker.py's tune_malloc).
func TestUploadsReuseTheWorkersMemory(t *testing.T) {
	if _, err := os.Stat(DefaultPython); err != nil {
		t.Skipf("%s is missing (bash .ci/run installs it)", DefaultPython)
	}
	r, err := reaper.New(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Skipf("no reaper: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	go r.Run(ctx)

	hostCh, guestFile, err := contract.ChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	defer hostCh.Close()
	guestCh, err := contract.NewChannels(guestFile)
	if err != nil {
		t.Fatal(err)
	}
	defer guestCh.Close()
	code := t.TempDir()
	if err := os.WriteFile(filepath.Join(code, "main.py"), []byte(countApp), 0o644); err != nil {
		t.Fatal(err)
	}
	pool, err := Start(ctx, Options{App: "main:app", CodeDir: code, Workers: 1, ScriptDir: t.TempDir(), Reaper: r, Channels: guestCh})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Stop(context.Background())
	_, sess := (&hostSide{t: t, ch: hostCh}).next()
	pid := pool.Workers()[0]

	const size = 10 << 20
	body := bytes.Repeat([]byte("x"), size)
	// Two uploads at a time, as a loaded worker has them: their pieces
	// interleave.
	round := func() {
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for range 2 {
			wg.Go(func() {
				got, err := upload(ctx, sess, body)
				if err == nil && got != strconv.Itoa(size) {
					err = io.ErrUnexpectedEOF
					t.Errorf("the app counted %q bytes, want %d", got, size)
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	round() // the heap grows to what the uploads need
	before := minorFaults(t, pid)
	const rounds = 4
	for range rounds {
		round()
	}
	perUpload := (minorFaults(t, pid) - before) / (2 * rounds)
	t.Logf("%d minor page faults per 10 MiB upload", perUpload)
	// 2,560 pages pass through; a few faults are the interpreter's own.
	if perUpload > 64 {
		t.Fatalf("the worker took %d page faults per 10 MiB upload: its body pieces are not reusing memory", perUpload)
	}
}
