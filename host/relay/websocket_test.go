package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ferry-vm/ferry/internal/syncbuf"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// wsDenyingProgram is wsProgram whose program denies every websocket with
// WS_CLOSE 1008 before accepting.
func wsDenyingProgram(t *testing.T) (string, <-chan *mux.Stream) {
	return wsServe(t, func(st *mux.Stream) { st.CloseWebSocket(1008, "not allowed") })
}

// wsProgram serves ServeWebSocket over a test HTTP server whose program is
// a mux session in this process: it returns the server's ws:// URL and a
// channel with each accepted program stream (answered 101).
func wsProgram(t *testing.T) (string, <-chan *mux.Stream) {
	return wsServe(t, func(st *mux.Stream) { st.WriteResponse(&message.ResponseHead{Status: 101}, nil, false) })
}

// wsServe is wsProgram with the program's answer to each stream.
func wsServe(t *testing.T, answer func(*mux.Stream)) (string, <-chan *mux.Stream) {
	return wsServeWith(t, wsOptions{}, answer)
}

// wsOptions change wsServeWith's fixture.
type wsOptions struct {
	maxStreams uint32        // the program's streams at once (0: the default)
	log        io.Writer     // the agent's log (nil: discarded)
	served     chan struct{} // gets a value each time ServeWebSocket returns
}

// wsServeWith is wsServe as opt says.
func wsServeWith(t *testing.T, opt wsOptions, answer func(*mux.Stream)) (string, <-chan *mux.Stream) {
	t.Helper()
	conns := unixPair(t)
	agent, program := mux.Client(conns[0], mux.Config{}), mux.Server(conns[1], mux.Config{MaxStreams: opt.maxStreams})
	streams := make(chan *mux.Stream, 4)
	go func() {
		for {
			st, err := program.Accept(context.Background())
			if err != nil {
				return
			}
			answer(st)
			streams <- st
		}
	}()
	log := slog.New(slog.DiscardHandler)
	if opt.log != nil {
		log = slog.New(slog.NewTextHandler(opt.log, nil))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ServeWebSocket(w, r, &Exchange{Session: agent, Log: log, ID: "test"})
		if opt.served != nil {
			opt.served <- struct{}{}
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		agent.Close()
		program.Close()
		srv.Close()
	})
	return "ws" + srv.URL[len("http"):], streams
}

func wsDial(t *testing.T, url string, dialed *net.TCPConn) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{}
	if dialed != nil {
		opts.HTTPClient = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				*dialed = *c.(*net.TCPConn)
			}
			return c, err
		}}}
	}
	c, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// A 16 MiB client message to a program that does not receive: the agent
// passes its first part on without having read the rest, so what it holds
// is a buffer and a window, not the message.
func TestWebSocketClientMessageIsNotBufferedWhole(t *testing.T) {
	url, streams := wsProgram(t)
	c := wsDial(t, url, nil)
	st := <-streams
	msg := make([]byte, 16<<20)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Write(ctx, websocket.MessageBinary, msg)
	deadline := time.Now().Add(30 * time.Second)
	for st.Buffered() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing of the message reached the program")
		}
		time.Sleep(5 * time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grown := int64(ms.HeapAlloc) - int64(before); grown > 8<<20 {
		t.Fatalf("the heap grew by %d KiB while the message waited for the program: it was read whole", grown>>10)
	}
	runtime.KeepAlive(msg) // the client's copy counts in before, not as growth
}

// A client that vanishes while its message waits for a program that does
// not receive is noticed (nothing reads from it): the program's stream is
// reset.
func TestWebSocketClientLeavingWhileProgramIsNotReceiving(t *testing.T) {
	t.Parallel()
	url, streams := wsProgram(t)
	var tcp net.TCPConn
	c := wsDial(t, url, &tcp)
	st := <-streams
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Write(ctx, websocket.MessageBinary, make([]byte, 16<<20))
	// Once the window is full the agent waits and reads nothing more (if
	// it still reads, the reset shows as a read error: either way the
	// program's stream must end).
	for deadline := time.Now().Add(30 * time.Second); st.Buffered() < mux.DefaultInitialWindow-1024; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the program's window did not fill: %d bytes", st.Buffered())
		}
	}
	time.Sleep(100 * time.Millisecond)
	tcp.SetLinger(0) // the connection is reset, as by a client that vanished
	c.CloseNow()
	select {
	case <-st.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the program's stream is still open after its client left")
	}
	var serr *mux.StreamError
	if err := st.Err(); !errors.As(err, &serr) || !serr.Remote {
		t.Fatalf("program's stream ended with %v, want the agent's reset", err)
	}
}

// A client that leaves before the program answers its upgrade, whether
// the agent was waiting for a free stream or for the answer, is not
// answered: nobody is there, so no error is logged (nor counted as a 502)
// for it, and the program's stream ends.
func TestWebSocketClientLeavingBeforeTheAnswer(t *testing.T) {
	t.Parallel()
	var logs syncbuf.Buffer
	served := make(chan struct{}, 2)
	// One stream at a time: the second upgrade waits for a free one.
	url, streams := wsServeWith(t, wsOptions{maxStreams: 1, log: &logs, served: served}, func(*mux.Stream) {}) // never answered
	dial := func() (cancel func(), failed <-chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, _, err := websocket.Dial(ctx, url, nil)
			errc <- err
		}()
		return cancel, errc
	}
	cancelAnswer, answerFailed := dial()
	st := <-streams
	cancelStream, streamFailed := dial()
	time.Sleep(200 * time.Millisecond) // the second upgrade waits for a stream
	if len(streams) != 0 {
		t.Fatal("the second upgrade got a stream beyond the program's limit")
	}
	// One after the other, so that the first's stream is not freed for the
	// second while it still waits.
	for _, c := range []struct {
		cancel func()
		failed <-chan error
	}{{cancelStream, streamFailed}, {cancelAnswer, answerFailed}} {
		c.cancel()
		if err := <-c.failed; err == nil {
			t.Fatal("an upgrade nobody answered succeeded")
		}
		select {
		case <-served:
		case <-time.After(30 * time.Second):
			t.Fatal("an upgrade whose client left is still being served")
		}
	}
	select {
	case <-st.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the program's stream is still open after its client left")
	}
	if logs.String() != "" {
		t.Fatalf("logged for clients that left:\n%s", logs.String())
	}
}

// A client message over contract.MaxWebSocketMessage closes the websocket with 1009
// on both sides; the program gets WS_CLOSE, not a reset.
func TestWebSocketOversizedClientMessageCloses1009(t *testing.T) {
	t.Parallel()
	url, streams := wsProgram(t)
	c := wsDial(t, url, nil)
	st := <-streams
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go c.Write(ctx, websocket.MessageBinary, make([]byte, contract.MaxWebSocketMessage+1))
	buf := make([]byte, 64<<10)
	for {
		_, _, _, err := st.ReadFragment(buf)
		if err == nil {
			continue
		}
		var closed *mux.WSCloseError
		if !errors.As(err, &closed) || closed.Code != uint32(websocket.StatusMessageTooBig) {
			t.Fatalf("program saw %v, want a close with 1009", err)
		}
		break
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("client saw %v, want a close with 1009", err)
	}
}

// A websocket the program denies ends its stream once the client has its
// 403: nothing of it stays open in the agent or in init's relay.
func TestWebSocketDeniedStreamEnds(t *testing.T) {
	url, streams := wsDenyingProgram(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("dial: %v, %v; want 403", resp, err)
	}
	st := <-streams
	select {
	case <-st.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the denied websocket's stream is still open")
	}
}

// A program's own refusal of a websocket (websocket.http.response) is held
// to the rules of any response: an invalid head is a 502, and no
// Content-Type is invented for one that sent none.
func TestWebSocketRefusalResponseIsChecked(t *testing.T) {
	for _, c := range []struct {
		name        string
		head        message.ResponseHead
		status      int
		contentType []string
	}{
		{"invalid", message.ResponseHead{Status: 403, Headers: []message.HeaderField{
			{Name: []byte("content-length"), Value: []byte("5")}, {Name: []byte("content-length"), Value: []byte("7")}}}, http.StatusBadGateway, []string{"application/json"}},
		{"no content type", message.ResponseHead{Status: 403}, http.StatusForbidden, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			url, _ := wsServe(t, func(st *mux.Stream) {
				st.WriteResponse(&c.head, []byte("nope!"), true)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, resp, err := websocket.Dial(ctx, url, nil)
			if err == nil || resp == nil {
				t.Fatalf("dial: %v, %v; want a refusal", resp, err)
			}
			if resp.StatusCode != c.status || fmt.Sprint(resp.Header.Values("Content-Type")) != fmt.Sprint(c.contentType) {
				t.Errorf("refusal answered %d with Content-Type %q, want %d with %q", resp.StatusCode, resp.Header.Values("Content-Type"), c.status, c.contentType)
			}
		})
	}
}
