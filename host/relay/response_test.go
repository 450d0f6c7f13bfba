package relay

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
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
// fields kept in order, unusual names canonicalised, the request id and a
// Content-Length replacing the app's (the app's own X-Request-Id kept, and
// beside the request's id in the log); of the hop-by-hop fields only
// Transfer-Encoding is dropped (net/http frames the body), and a
// Connection with close becomes exactly "close" (what net/http closes on).
func TestWriteHead(t *testing.T) {
	rec := httptest.NewRecorder()
	rh := &message.ResponseHead{Status: 201, Headers: []message.HeaderField{
		{Name: []byte("set-cookie"), Value: []byte("a=1")}, {Name: []byte("x-odd-name"), Value: []byte("v")},
		{Name: []byte("connection"), Value: []byte("Close")}, {Name: []byte("set-cookie"), Value: []byte("b=2")},
		{Name: []byte("x-request-id"), Value: []byte("the app's")}, {Name: []byte("content-length"), Value: []byte("9")},
		{Name: []byte("keep-alive"), Value: []byte("timeout=5")}, {Name: []byte("transfer-encoding"), Value: []byte("chunked")},
	}}
	ex := &Exchange{ID: "abc"}
	writeHead(rec, ex, rh, "3")
	want := http.Header{"Set-Cookie": {"a=1", "b=2"}, "X-Odd-Name": {"v"}, "X-Request-Id": {"the app's"}, "Content-Length": {"3"},
		"Content-Type": nil, "Connection": {"close"}, "Keep-Alive": {"timeout=5"}}
	if rec.Code != 201 || !reflect.DeepEqual(rec.Result().Header, want) || ex.ID != "abc" || ex.AppID != "the app's" {
		t.Errorf("status %d header %v, want %v; request id %q, the app's %q", rec.Code, rec.Result().Header, want, ex.ID, ex.AppID)
	}
	if got := fmt.Sprint(ex.LogAttrs()); got != "[request_id abc app_request_id the app's]" {
		t.Errorf("the exchange is logged as %s", got)
	}
	// The app's id equal to the request's (it echoed it): nothing beside.
	ex = &Exchange{ID: "abc"}
	writeHead(httptest.NewRecorder(), ex, &message.ResponseHead{Status: 200,
		Headers: []message.HeaderField{{Name: []byte("x-request-id"), Value: []byte("abc")}}}, "")
	if ex.ID != "abc" || ex.AppID != "" || fmt.Sprint(ex.LogAttrs()) != "[request_id abc]" {
		t.Errorf("an echoed id: %q, %q", ex.ID, ex.AppID)
	}

	// A hostile id of the app's (controls are refused before, with a
	// 502; spaces, tabs and bytes not UTF-8 are not): the client gets it
	// as the app sent it; the log and the recent requests get its first
	// maxAppID bytes, a copy that does not keep the app's whole head
	// alive (up to a worker's 256 KiB frame, 50 of them in the recent
	// requests), and each log line stays one line of the log's syntax.
	hostile := "a b\tlevel=ERROR msg=forged \xff é" + strings.Repeat("x", 200<<10)
	ex = &Exchange{ID: "abc"}
	rec = httptest.NewRecorder()
	writeHead(rec, ex, &message.ResponseHead{Status: 200, Headers: []message.HeaderField{
		{Name: []byte("x-request-id"), Value: []byte(hostile)}, {Name: []byte("x-request-id"), Value: []byte("second")}}}, "")
	if got := rec.Result().Header["X-Request-Id"]; len(got) != 2 || got[0] != hostile || got[1] != "second" {
		t.Errorf("the client got X-Request-Id %.60q", got)
	}
	if len(ex.AppID) > maxAppID+len("...") || !strings.HasPrefix(hostile, strings.TrimSuffix(ex.AppID, "...")) {
		t.Errorf("the app's hostile id is kept as %d bytes: %.60q", len(ex.AppID), ex.AppID)
	}
	for _, h := range []func(io.Writer) slog.Handler{
		func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) },
		func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, nil) },
	} {
		var out bytes.Buffer
		slog.New(h(&out)).Warn("response broke off", ex.LogAttrs()...)
		if got := out.String(); strings.Count(got, "\n") != 1 || strings.Contains(got, " level=ERROR") || len(got) > 1000 {
			t.Errorf("logged as %d bytes: %.200q", len(got), got)
		}
	}

	// A 426's Upgrade and Connection, a 407's Proxy-Authenticate: the
	// app's, as it sent them.
	for _, c := range []struct {
		status uint32
		fields []string
		want   http.Header
	}{
		{426, []string{"upgrade", "TLS/1.2, HTTP/1.1", "connection", "Upgrade"}, http.Header{"Upgrade": {"TLS/1.2, HTTP/1.1"}, "Connection": {"Upgrade"}}},
		{407, []string{"proxy-authenticate", `Basic realm="p"`}, http.Header{"Proxy-Authenticate": {`Basic realm="p"`}}},
	} {
		rec := httptest.NewRecorder()
		rh := &message.ResponseHead{Status: c.status}
		for i := 0; i < len(c.fields); i += 2 {
			rh.Headers = append(rh.Headers, message.HeaderField{Name: []byte(c.fields[i]), Value: []byte(c.fields[i+1])})
		}
		writeHead(rec, &Exchange{ID: "abc"}, rh, "")
		c.want["X-Request-Id"], c.want["Content-Type"] = []string{"abc"}, nil
		if rec.Code != int(c.status) || !reflect.DeepEqual(rec.Result().Header, c.want) {
			t.Errorf("status %d header %v, want %v", rec.Code, rec.Result().Header, c.want)
		}
	}
}

// A request's id is the client's X-Request-Id when it sent one that is
// well-formed, once; otherwise a new one.
func TestRequestID(t *testing.T) {
	for _, c := range []struct {
		sent []string
		kept bool
	}{
		{nil, false},
		{[]string{"0f8fad5b-d9cb-469f-a165-70867728950e"}, true},
		{[]string{"Root=1-67891233-abcdef012345678912345678"}, true},
		{[]string{"a"}, true},
		{[]string{""}, false},
		{[]string{"two words"}, false},
		{[]string{"line\nbreak"}, false},
		{[]string{strings.Repeat("x", 129)}, false},
		{[]string{"one", "two"}, false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header["X-Request-Id"] = c.sent
		got := RequestID(r)
		if kept := len(c.sent) == 1 && got == c.sent[0]; kept != c.kept || got == "" {
			t.Errorf("sent %q: id %q, kept %v, want kept %v", c.sent, got, kept, c.kept)
		}
	}
}

// The app's id is kept whole up to maxAppID bytes, else cut there, not
// inside a character.
func TestKeptAppID(t *testing.T) {
	x := strings.Repeat("x", maxAppID-1)
	for _, c := range []struct{ in, want string }{
		{"abc", "abc"},
		{x + "y", x + "y"},
		{x + "yz", x + "y..."},
		{x + "é", x + "..."},            // é's second byte is past the bound
		{x + "\xff\xfe", x + "\xff..."}, // bytes not UTF-8 are cut anywhere
	} {
		if got := keptAppID(c.in); got != c.want {
			t.Errorf("%q kept as %q, want %q", c.in, got, c.want)
		}
	}
}
