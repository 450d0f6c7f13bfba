package relay

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/protocol/message"
)

func TestCheckResponseHead(t *testing.T) {
	h := func(pairs ...string) []message.HeaderField {
		var hs []message.HeaderField
		for i := 0; i < len(pairs); i += 2 {
			hs = append(hs, message.HeaderField{Name: []byte(pairs[i]), Value: []byte(pairs[i+1])})
		}
		return hs
	}
	cases := []struct {
		name    string
		status  uint32
		headers []message.HeaderField
		err     string // part of the error; empty: valid
		want    string // the headers after the check, "name: value" joined by "; "
	}{
		{"plain", 200, h("content-type", "text/plain", "content-length", "5"), "", "content-type: text/plain; content-length: 5"},
		{"no headers", 204, nil, "", ""},
		{"transfer-encoding alone", 200, h("transfer-encoding", "chunked"), "", "transfer-encoding: chunked"},
		{"identical lengths collapse", 200, h("content-length", "5", "x-a", "1", "Content-Length", "5"), "", "content-length: 5; x-a: 1"},
		{"length list collapses", 200, h("content-length", "5, 5"), "", "content-length: 5"},
		{"leading zeros", 200, h("content-length", "005"), "", "content-length: 5"},
		{"lowest status", 200, nil, "", ""},
		{"highest status", 599, nil, "", ""},
		{"conflicting lengths", 200, h("content-length", "5", "content-length", "7"), "conflicting", ""},
		{"conflicting list", 200, h("content-length", "5, 7"), "conflicting", ""},
		{"negative length", 200, h("content-length", "-5"), "non-negative", ""},
		{"signed length", 200, h("content-length", "+5"), "non-negative", ""},
		{"empty length", 200, h("content-length", ""), "not a number", ""},
		{"empty list element", 200, h("content-length", "5,"), "not a number", ""},
		{"huge length", 200, h("content-length", "99999999999999999999"), "too large", ""},
		{"length and transfer-encoding", 200, h("content-length", "5", "transfer-encoding", "chunked"), "both", ""},
		{"transfer-encoding first", 200, h("Transfer-Encoding", "chunked", "content-length", "5"), "both", ""},
		{"informational", 103, nil, "status 103", ""},
		{"continue", 100, nil, "status 100", ""},
		{"switching protocols", 101, nil, "status 101", ""},
		{"beyond 599", 600, nil, "status 600", ""},
		{"999", 999, nil, "status 999", ""},
		{"CR LF in a value", 200, h("x-a", "a\r\nx-b: 1"), "control characters", ""},
		{"NUL in a value", 200, h("x-a", "a\x00b"), "control characters", ""},
		{"space in a name", 200, h("x a", "1"), "not a token", ""},
		{"colon in a name", 200, h("x:a", "1"), "not a token", ""},
		{"empty name", 200, h("", "1"), "not a token", ""},
		{"CR in a name", 200, h("x\ra", "1"), "not a token", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rh := message.ResponseHead{Status: c.status, Headers: c.headers}
			err := checkResponseHead(&rh)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one mentioning %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("valid head refused: %v", err)
			}
			var got []string
			for _, f := range rh.Headers {
				got = append(got, strings.ToLower(string(f.Name))+": "+string(f.Value))
			}
			if g := strings.Join(got, "; "); g != c.want {
				t.Fatalf("headers after the check %q, want %q", g, c.want)
			}
		})
	}
}

// TestCanonicalNames checks the table of usual names against net/http.
func TestCanonicalNames(t *testing.T) {
	for lower, name := range canonicalNames {
		if want := http.CanonicalHeaderKey(lower); name != want {
			t.Errorf("%s: %s, want %s", lower, name, want)
		}
	}
}

// TestWriteHead checks the fields writeHead gives the client: repeated
// fields kept in order, hop-by-hop ones dropped, unusual names
// canonicalised, the request id and a Content-Length replacing the app's.
func TestWriteHead(t *testing.T) {
	rec := httptest.NewRecorder()
	rh := &message.ResponseHead{Status: 201, Headers: []message.HeaderField{
		{Name: []byte("set-cookie"), Value: []byte("a=1")}, {Name: []byte("x-odd-name"), Value: []byte("v")},
		{Name: []byte("connection"), Value: []byte("close")}, {Name: []byte("set-cookie"), Value: []byte("b=2")},
		{Name: []byte("x-request-id"), Value: []byte("the app's")}, {Name: []byte("content-length"), Value: []byte("9")},
	}}
	writeHead(rec, &Exchange{ID: "abc"}, rh, "3")
	want := http.Header{"Set-Cookie": {"a=1", "b=2"}, "X-Odd-Name": {"v"}, "X-Request-Id": {"abc"}, "Content-Length": {"3"}, "Content-Type": nil}
	if rec.Code != 201 || !reflect.DeepEqual(rec.Result().Header, want) {
		t.Errorf("status %d header %v, want %v", rec.Code, rec.Result().Header, want)
	}
}
