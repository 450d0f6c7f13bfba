package mux

import (
	"bytes"
	"io"
	"testing"

	"github.com/ferry-vm/ferry/protocol/message"
)

func TestRoundTripWithTrailers(t *testing.T) {
	c, s := sessionPair(t, Config{}, Config{})
	ctx := testContext(t)
	go func() {
		st, err := s.Accept(ctx)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		var req message.RequestHead
		if err := st.RequestHead(&req); err != nil {
			t.Errorf("request head: %v", err)
			return
		}
		body, err := io.ReadAll(st)
		if err != nil {
			t.Errorf("read body: %v", err)
			return
		}
		resp := message.ResponseHead{Status: 200, Headers: []message.HeaderField{{Name: []byte("x-path"), Value: req.Path}}}
		if err := st.WriteResponse(&resp, nil, false); err != nil {
			t.Errorf("write response: %v", err)
			return
		}
		st.Write(bytes.ToUpper(body))
		st.CloseWriteTrailers([]message.HeaderField{{Name: []byte("x-sum"), Value: []byte("42")}})
	}()
	st, err := c.Open(ctx, &message.RequestHead{Method: []byte("POST"), Path: []byte("/echo")}, []byte("hello ferry"), true)
	if err != nil {
		t.Fatal(err)
	}
	var resp message.ResponseHead
	if err := st.ReadResponse(ctx, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || string(resp.Headers[0].Value) != "/echo" {
		t.Fatalf("response head %+v", resp)
	}
	body, err := io.ReadAll(st)
	if err != nil || string(body) != "HELLO FERRY" {
		t.Fatalf("body %q, %v", body, err)
	}
	tr, err := st.Trailers()
	if err != nil || len(tr) != 1 || string(tr[0].Value) != "42" {
		t.Fatalf("trailers %v, %v", tr, err)
	}
}
