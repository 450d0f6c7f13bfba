package mux

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/ferry-vm/ferry/protocol/message"
)

// serveEcho answers every stream accepted from s with sizedResponder.
func serveEcho(ctx context.Context, s *Session, respSize int) {
	h := sizedResponder(respSize)
	for {
		st, err := s.Accept(ctx)
		if err != nil {
			return
		}
		go h(st)
	}
}

// sizedResponder reads the request body and answers 200 with a body of
// respSize bytes.
func sizedResponder(respSize int) func(*Stream) {
	resp := bytes.Repeat([]byte("r"), respSize)
	return func(st *Stream) {
		var req message.RequestHead
		if err := st.RequestHead(&req); err != nil {
			st.Reset(1, err.Error())
			return
		}
		var buf [2048]byte
		for {
			if _, err := st.Read(buf[:]); err != nil {
				break
			}
		}
		head := message.ResponseHead{Status: 200}
		st.WriteResponse(&head, resp, true)
	}
}

var benchRequest = message.RequestHead{
	HTTPVersion: []byte("1.1"), Method: []byte("POST"), Scheme: []byte("http"),
	Path: []byte("/api/items"), RawPath: []byte("/api/items"),
	Headers: []message.HeaderField{
		{Name: []byte("host"), Value: []byte("app.example")},
		{Name: []byte("content-type"), Value: []byte("application/json")},
		{Name: []byte("content-length"), Value: []byte("1024")},
	},
}

// BenchmarkRoundTrip1KiB measures one request/response exchange with a
// 1 KiB body each way on a new stream, over a real unix socket pair.
// allocs/op counts both sides (client and server run in this process).
// The server side serves streams with Config.Handler.
func BenchmarkRoundTrip1KiB(b *testing.B) {
	c, _ := sessionPair(b, Config{}, Config{Handler: sizedResponder(1024)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	benchRoundTrips(b, ctx, c)
}

// BenchmarkRoundTrip1KiBAccept is BenchmarkRoundTrip1KiB with the server
// taking streams from Accept and starting a goroutine for each.
func BenchmarkRoundTrip1KiBAccept(b *testing.B) {
	c, s := sessionPair(b, Config{}, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go serveEcho(ctx, s, 1024)
	benchRoundTrips(b, ctx, c)
}

// benchRoundTrips times b.N round trips of 1 KiB each way on c.
func benchRoundTrips(b *testing.B, ctx context.Context, c *Session) {
	body := bytes.Repeat([]byte("q"), 1024)
	buf := make([]byte, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		roundTrip(b, ctx, c, body, buf)
	}
}

func roundTrip(b *testing.B, ctx context.Context, c *Session, body, buf []byte) {
	st, err := c.Open(ctx, &benchRequest, body, true)
	if err != nil {
		b.Fatal(err)
	}
	var resp message.ResponseHead
	if err := st.ReadResponse(ctx, &resp); err != nil {
		b.Fatal(err)
	}
	if n := drain(b, st, buf); n != 1024 {
		b.Fatalf("got %d response bytes", n)
	}
}

// drain reads a stream's body to the end and returns its length.
func drain(b *testing.B, st *Stream, buf []byte) int {
	n := 0
	for {
		m, err := st.Read(buf)
		n += m
		if err == io.EOF {
			return n
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

const bulkSize = 256 << 20

// BenchmarkBulk256MiB streams one 256 MiB body through one stream.
func BenchmarkBulk256MiB(b *testing.B) {
	c, s := sessionPair(b, Config{}, Config{})
	ctx := context.Background()
	chunk := make([]byte, 256<<10)
	b.SetBytes(bulkSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		wg.Add(1)
		var got int64
		go func() {
			defer wg.Done()
			st, err := s.Accept(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			got, _ = io.CopyBuffer(io.Discard, onlyReader{st}, make([]byte, 256<<10))
			st.WriteResponse(&message.ResponseHead{Status: 200}, nil, true)
		}()
		st, err := c.Open(ctx, &benchRequest, nil, false)
		if err != nil {
			b.Fatal(err)
		}
		for sent := 0; sent < bulkSize; sent += len(chunk) {
			if _, err := st.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		st.CloseWrite()
		wg.Wait()
		if got != bulkSize {
			b.Fatalf("received %d bytes", got)
		}
		st.Close()
	}
}

// BenchmarkRawUnixCopy256MiB is the baseline for BenchmarkBulk256MiB: the
// same bytes copied over a bare unix socket pair with the same buffers.
func BenchmarkRawUnixCopy256MiB(b *testing.B) {
	chunk := make([]byte, 256<<10)
	b.SetBytes(bulkSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		x, y := unixPair(b)
		done := make(chan int64)
		go func() {
			n, _ := io.CopyBuffer(io.Discard, onlyReader{y}, make([]byte, 256<<10))
			done <- n
		}()
		for sent := 0; sent < bulkSize; sent += len(chunk) {
			if _, err := x.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		x.(*net.UnixConn).CloseWrite()
		if n := <-done; n != bulkSize {
			b.Fatalf("received %d", n)
		}
		x.Close()
		y.Close()
	}
}

// onlyReader hides WriteTo so io.CopyBuffer uses the given buffer.
type onlyReader struct{ io.Reader }

// BenchmarkConcurrentStreams1000 keeps 1,000 request/response exchanges in
// flight at once; one op is one batch of 1,000.
func BenchmarkConcurrentStreams1000(b *testing.B) {
	c, s := sessionPair(b, Config{}, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go serveEcho(ctx, s, 1024)
	body := bytes.Repeat([]byte("q"), 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		for j := 0; j < 1000; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				roundTrip(b, ctx, c, body, make([]byte, 4096))
			}()
		}
		wg.Wait()
	}
}
