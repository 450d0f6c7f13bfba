package transport

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
)

func TestSniffSortsByFirstByte(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(contract.Transport{Kind: contract.TransportUnix, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	others := make(chan string, 2)
	s := Sniff(context.Background(), l, func(b byte) bool { return b == 0x01 }, func(_ context.Context, c io.ReadWriteCloser) {
		b, _ := io.ReadAll(c)
		others <- string(b)
	}, nil)
	defer s.Close()
	send := func(p string) {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(p))
		c.(*net.UnixConn).CloseWrite()
		t.Cleanup(func() { c.Close() })
	}
	send("halt")
	send("\x01ferry")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(c); string(b) != "\x01ferry" {
		t.Fatalf("ours read %q", b)
	}
	select {
	case got := <-others:
		if got != "halt" {
			t.Fatalf("other read %q", got)
		}
	case <-ctx.Done():
		t.Fatal("the other connection never arrived")
	}
	s.Close()
	if _, err := s.Accept(context.Background()); err == nil {
		t.Fatal("Accept after Close")
	}
}
