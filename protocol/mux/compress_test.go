package mux

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/ferry-vm/ferry/protocol/message"
)

// countingConn counts bytes written to the connection.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func TestCompressionRoundTrip(t *testing.T) {
	body := bytes.Repeat([]byte(`{"id": 1, "name": "ferry", "tags": ["a", "b"]} `), 20000) // ~1 MiB, compressible
	for _, tc := range []struct {
		name      string
		alg       uint32
		peerNoDec bool
		wantSmall bool
	}{
		{"s2", message.CompressS2, false, true},
		{"zstd", message.CompressZstd, false, true},
		{"peer accepts none", message.CompressZstd, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := unixPair(t)
			counted := &countingConn{Conn: a}
			c := Client(counted, Config{Compress: tc.alg})
			s := Server(b, Config{NoDecompress: tc.peerNoDec})
			defer c.Close()
			defer s.Close()
			ctx := testContext(t)
			go func() {
				st, err := s.Accept(ctx)
				if err == nil {
					echoHandler(st)
				}
			}()
			before := counted.n.Load()
			st, err := c.Open(ctx, &message.RequestHead{Path: []byte("/")}, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.WriteLast(body); err != nil {
				t.Fatal(err)
			}
			var resp message.ResponseHead
			if err := st.ReadResponse(ctx, &resp); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("echo: %d bytes, %v", len(got), err)
			}
			sent := counted.n.Load() - before
			if small := sent < int64(len(body))/4; small != tc.wantSmall {
				t.Fatalf("sent %d bytes on the wire for a %d-byte body", sent, len(body))
			}
			t.Logf("%s: %d body bytes sent as %d wire bytes", tc.name, len(body), sent)
		})
	}
}
