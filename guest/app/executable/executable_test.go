package executable

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/ferry-vm/ferry/protocol/contract"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/guest/app"
	"github.com/ferry-vm/ferry/guest/reaper"
	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// serverEnv makes this test binary, started again, the program under
// test: an HTTP server on PORT (see testProgram).
const serverEnv = "FERRY_EXECUTABLE_TEST_PROGRAM"

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(serverEnv); ok {
		testProgram(mode)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testProgram is the program the tests run: "serve" answers HTTP on PORT
// (the paths below), "exit" prints a line and exits 1 before listening,
// "mute" prints a line and never listens.
func testProgram(mode string) {
	fmt.Println("program starting", mode)
	fmt.Fprintln(os.Stderr, "a line on stderr")
	switch mode {
	case "exit":
		os.Exit(1)
	case "mute":
		time.Sleep(time.Hour)
	case "serial":
		serveSerially()
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-URI", r.RequestURI)
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Connection", r.Header.Get("Connection"))
		w.Header().Set("X-Length", strconv.FormatInt(r.ContentLength, 10))
		w.Header().Set("Keep-Alive", "timeout=5") // hop-by-hop: not relayed
		w.Write(body)
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		w.Write([]byte("body"))
		w.Header().Set("X-Checksum", "abc")
	})
	mux.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, os.Getpid())
	})
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		os.Exit(2)
	})
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		rw.Flush()
		io.Copy(conn, rw) // echo until the client closes its side
	})
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	http.Serve(l, mux)
}

// serveSerially is an HTTP/1.1 server that, like Python's http.server,
// serves one connection at a time, keeping it while the client keeps it
// open: "/slow" answers after 300 ms, anything else at once.
func serveSerially() {
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				break
			}
			io.Copy(io.Discard, req.Body)
			if req.URL.Path == "/slow" {
				time.Sleep(300 * time.Millisecond)
			}
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				break
			}
		}
		c.Close()
	}
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var reaperOnce struct {
	sync.Once
	r   *reaper.Reaper
	err error
}

// testReaper returns the test binary's reaper (one for all tests: it reaps
// every child of the process).
func testReaper(t *testing.T) *reaper.Reaper {
	t.Helper()
	reaperOnce.Do(func() {
		reaperOnce.r, reaperOnce.err = reaper.New(slog.New(slog.DiscardHandler))
		if reaperOnce.err == nil {
			go reaperOnce.r.Run(context.Background())
		}
	})
	if reaperOnce.err != nil {
		t.Fatal(reaperOnce.err)
	}
	return reaperOnce.r
}

// output records the program's lines.
type output struct {
	mu    sync.Mutex
	lines []string
}

func (o *output) Line(source string, origin int, line []byte) {
	o.mu.Lock()
	o.lines = append(o.lines, source+": "+string(line))
	o.mu.Unlock()
}

// start runs the test program in mode and stops it when the test ends.
func start(t *testing.T, mode string, out app.Output) (*Program, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(ctx, Options{
		Argv: []string{self}, Dir: t.TempDir(), Env: []string{serverEnv + "=" + mode, "PORT=" + strconv.Itoa(port)},
		Port: port, ListenTimeout: 500 * time.Millisecond, Reaper: testReaper(t), Output: out,
	})
	if err == nil {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p.Stop(ctx)
		})
	}
	return p, err
}

// host is the host's end of a session whose init end hands every stream
// to p.Serve.
func host(t *testing.T, p *Program) *mux.Session {
	t.Helper()
	a, b := net.Pipe()
	hostSess := mux.Client(a, mux.Config{})
	initSess := mux.Server(b, mux.Config{Handler: func(st *mux.Stream) { p.Serve(context.Background(), st) }})
	t.Cleanup(func() { hostSess.Close(); initSess.Close() })
	return hostSess
}

type response struct {
	status   int
	headers  map[string]string
	body     string
	trailers map[string]string
}

// request sends one request and reads the whole response.
func request(t *testing.T, sess *mux.Session, method, target string, headers map[string]string, body string) (response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	path, query, _ := strings.Cut(target, "?")
	head := &message.RequestHead{Method: []byte(method), Path: []byte(path), QueryString: []byte(query)}
	for k, v := range headers {
		head.Headers = append(head.Headers, message.HeaderField{Name: []byte(k), Value: []byte(v)})
	}
	st, err := sess.Open(ctx, head, []byte(body), true)
	if err != nil {
		return response{}, err
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		return response{}, err
	}
	r := response{status: int(rh.Status), headers: fields(rh.Headers)}
	b, err := io.ReadAll(st)
	if err != nil {
		return r, err
	}
	r.body = string(b)
	tr, err := st.Trailers()
	r.trailers = fields(tr)
	return r, err
}

func fields(hs []message.HeaderField) map[string]string {
	m := map[string]string{}
	for _, h := range hs {
		m[string(h.Name)] = string(h.Value)
	}
	return m
}

// Requests reach the program as HTTP/1.1 with their method, target, host
// and body; hop-by-hop headers are dropped both ways; redirects and
// trailers pass through as the program sent them.
func TestServeRelaysHTTP(t *testing.T) {
	out := &output{}
	p, err := start(t, "serve", out)
	if err != nil {
		t.Fatal(err)
	}
	sess := host(t, p)
	for _, tc := range []struct {
		name, method, target string
		headers              map[string]string
		body                 string
		check                func(t *testing.T, r response)
	}{
		{"GET with a query", "GET", "/echo?a=1&b=%20", map[string]string{"host": "example.test"}, "", func(t *testing.T, r response) {
			if r.status != 200 || r.headers["x-method"] != "GET" || r.headers["x-uri"] != "/echo?a=1&b=%20" || r.headers["x-host"] != "example.test" {
				t.Fatalf("%+v", r)
			}
			if _, ok := r.headers["keep-alive"]; ok {
				t.Fatal("a hop-by-hop response header was relayed")
			}
		}},
		{"POST with a body of known length", "POST", "/echo", map[string]string{"content-length": "5", "connection": "close, x-private"}, "hello", func(t *testing.T, r response) {
			if r.body != "hello" || r.headers["x-length"] != "5" || r.headers["x-connection"] != "" {
				t.Fatalf("%+v", r)
			}
		}},
		{"POST with a streamed body", "POST", "/echo", nil, strings.Repeat("x", 100<<10), func(t *testing.T, r response) {
			if len(r.body) != 100<<10 {
				t.Fatalf("echoed %d bytes", len(r.body))
			}
		}},
		{"a redirect is not followed", "GET", "/redirect", nil, "", func(t *testing.T, r response) {
			if r.status != 302 || r.headers["location"] != "/elsewhere" {
				t.Fatalf("%+v", r)
			}
		}},
		{"trailers", "GET", "/trailers", nil, "", func(t *testing.T, r response) {
			if r.body != "body" || r.trailers["x-checksum"] != "abc" {
				t.Fatalf("%+v", r)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := request(t, sess, tc.method, tc.target, tc.headers, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
		})
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if len(out.lines) < 2 || out.lines[0] != "stdout: program starting serve" && out.lines[1] != "stdout: program starting serve" {
		t.Fatalf("output %q", out.lines)
	}
}

// An upgrade answered with 101 carries raw bytes both ways.
func TestServeRelaysAnUpgrade(t *testing.T) {
	p, err := start(t, "serve", app.DiscardOutput{})
	if err != nil {
		t.Fatal(err)
	}
	sess := host(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	head := &message.RequestHead{Method: []byte("GET"), Path: []byte("/upgrade"), Headers: []message.HeaderField{
		{Name: []byte("connection"), Value: []byte("Upgrade")}, {Name: []byte("upgrade"), Value: []byte("echo")}}}
	st, err := sess.Open(ctx, head, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil || rh.Status != 101 || fields(rh.Headers)["upgrade"] != "echo" {
		t.Fatalf("%d %v %v", rh.Status, rh.Headers, err)
	}
	if _, err := st.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	got, err := io.ReadAll(bufio.NewReader(st))
	if err != nil || string(got) != "ping" {
		t.Fatalf("echoed %q, %v", got, err)
	}
}

// A program that exits is restarted (after 100 ms); the request it held
// is reset with WORKER_LOST.
func TestProgramIsRestartedAfterACrash(t *testing.T) {
	p, err := start(t, "serve", app.DiscardOutput{})
	if err != nil {
		t.Fatal(err)
	}
	sess := host(t, p)
	before, err := request(t, sess, "GET", "/pid", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = request(t, sess, "GET", "/crash", nil, "")
	var serr *mux.StreamError
	if !errors.As(err, &serr) || serr.Code != frame.CodeWorkerLost {
		t.Fatalf("crashing request: %v, want a WORKER_LOST reset", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, err := request(t, sess, "GET", "/pid", nil, "")
		if err == nil && after.body != before.body {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not restarted: pid %s before the crash; now %q, %v", before.body, after.body, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A program that exits before listening, or never listens within the
// timeout, fails Start with a structured error carrying its last lines.
func TestStartFailures(t *testing.T) {
	for _, tc := range []struct {
		mode, message string
	}{
		{"exit", "exited"},
		{"mute", "did not accept connections"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			_, err := start(t, tc.mode, nil)
			var serr *contract.ConfigError
			if !errors.As(err, &serr) || serr.Phase != "app" || serr.Field != "entrypoint" || !strings.Contains(serr.Message, tc.message) {
				t.Fatalf("Start: %#v", err)
			}
			if !strings.Contains(serr.Detail, "program starting "+tc.mode) || !strings.Contains(serr.Detail, "a line on stderr") {
				t.Fatalf("detail %q", serr.Detail)
			}
		})
	}
}

// Stop ends the program; a request after it is reset.
func TestStop(t *testing.T) {
	out := &output{}
	p, err := start(t, "serve", out)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	sess := host(t, p)
	_, err = request(t, sess, "GET", "/pid", nil, "")
	var serr *mux.StreamError
	if !errors.As(err, &serr) || serr.Code != frame.CodeWorkerLost {
		t.Fatalf("request after Stop: %v", err)
	}
}

// A program that serves one connection at a time (Python's http.server)
// is not starved by the relay's idle connections: a request that arrived
// while another was in flight got a connection of its own, which the
// program reaches only once the first connection closes; the relay must
// not keep that one idle for long. (Before, it kept it 90 s, and the
// second request waited for it.)
func TestServeAProgramThatServesOneConnectionAtATime(t *testing.T) {
	p, err := start(t, "serial", app.DiscardOutput{})
	if err != nil {
		t.Fatal(err)
	}
	sess := host(t, p)
	slow := make(chan error, 1)
	go func() {
		r, err := request(t, sess, "GET", "/slow", nil, "")
		if err == nil && r.body != "ok" {
			err = fmt.Errorf("slow request: %+v", r)
		}
		slow <- err
	}()
	time.Sleep(100 * time.Millisecond) // the slow request holds the program's one connection
	r, err := request(t, sess, "GET", "/", nil, "")
	if err != nil || r.body != "ok" {
		t.Fatalf("the request behind the slow one: %+v, %v", r, err)
	}
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
}
