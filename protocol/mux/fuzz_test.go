package mux

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
)

// FuzzSession feeds arbitrary frames (after a valid HELLO) to a server
// session. It must never panic, must close when the input ends, and must
// leave no goroutine behind.
func FuzzSession(f *testing.F) {
	seed := func(frames ...[]byte) []byte {
		var b []byte
		for _, fr := range frames {
			b = append(b, fr...)
		}
		return b
	}
	fr := func(t frame.Type, flags frame.Flags, id uint32, p []byte) []byte {
		return append(frame.AppendHeader(nil, frame.Header{Type: t, Flags: flags, StreamID: id, Length: uint32(len(p))}), p...)
	}
	req := (&message.RequestHead{Method: []byte("GET"), Path: []byte("/")}).Append(nil)
	f.Add(seed(fr(frame.TypeRequest, 0, 1, req), fr(frame.TypeData, frame.FlagFin, 1, []byte("body"))))
	f.Add(seed(fr(frame.TypeRequest, frame.FlagFin, 1, req), fr(frame.TypeReset, 0, 1, []byte{8, 7})))
	f.Add(seed(fr(frame.TypeRequest, 0, 3, req), fr(frame.TypeWSMessage, frame.FlagText|frame.FlagMore, 3, []byte("hi")), fr(frame.TypeWSClose, frame.FlagFin, 3, nil)))
	f.Add(seed(fr(frame.TypePing, 0, 0, make([]byte, 8)), fr(frame.TypeGoAway, 0, 0, []byte{8, 1})))
	f.Add(seed(fr(frame.TypeRequest, 0, 1, req), fr(frame.TypeWindowUpdate, 0, 1, []byte{0, 0, 1, 0})))
	f.Add([]byte("\x12\x02\x00\x00\x00\x01\x00\x00\x00\x03\x01\xff\xff"))

	hello := (&message.Hello{Version: 1, Role: message.RoleClient, MaxFrameSize: frame.DefaultMaxSize,
		InitialWindow: 1 << 16, MaxStreams: 8}).Append(nil)
	prefix := fr(frame.TypeHello, 0, 0, hello)

	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := unixPair(t)
		s := Server(b, Config{KeepaliveInterval: -1, MaxStreams: 8, InitialWindow: 1 << 16})
		// Drain whatever the session writes back.
		drained := make(chan struct{})
		go func() { io.Copy(io.Discard, a); close(drained) }()
		// Accept streams and read them, as a server would.
		ctx, cancel := context.WithCancel(context.Background())
		accepted := make(chan struct{})
		go func() {
			defer close(accepted)
			for {
				st, err := s.Accept(ctx)
				if err != nil {
					return
				}
				var h message.RequestHead
				st.RequestHead(&h)
				st.SetReadDeadline(time.Now().Add(time.Second))
				io.Copy(io.Discard, st)
				st.ReadMessage(1 << 16)
				st.Close()
			}
		}()
		a.Write(append(append([]byte(nil), prefix...), data...))
		a.(interface{ CloseWrite() error }).CloseWrite()
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("session still open after its input ended")
		}
		cancel()
		<-accepted
		s.Close()
		a.Close()
		<-drained
	})
}
