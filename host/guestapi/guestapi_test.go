package guestapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
)

// testStore opens a real single-node dqlite store, closed with the test.
func testStore(t *testing.T) *cluster.Node {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := cluster.Open(ctx, cluster.Options{Dir: t.TempDir(), Name: "n1", Address: addr, Capacity: cluster.Capacity{VCPUs: 1, MemoryMiB: 512}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

// answer is a call's answer.
type answer struct {
	status int
	header http.Header
	body   string
}

// code is the error code of a JSON error answer.
func (a answer) code() string {
	var e struct{ Error struct{ Code string } }
	json.Unmarshal([]byte(a.body), &e)
	return e.Error.Code
}

// call makes one call to h.
func call(t *testing.T, h http.Handler, method, target, body string) answer {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, target, r))
	res := w.Result()
	b, _ := io.ReadAll(res.Body)
	return answer{res.StatusCode, res.Header, string(b)}
}

// want fails the test unless a has the status and, for an error, code.
func want(t *testing.T, what string, a answer, status int, code string) {
	t.Helper()
	if a.status != status || (code != "" && a.code() != code) {
		t.Fatalf("%s: %d %s, want %d %s", what, a.status, a.body, status, code)
	}
	if a.status >= 400 && !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
		t.Fatalf("%s: an error as %s, want JSON", what, a.header.Get("Content-Type"))
	}
}

// A program stores, reads, lists and deletes its keys; values are bytes
// as they were sent.
func TestKeysRoundTrip(t *testing.T) {
	s := New(Options{Store: testStore(t)})
	h := s.Handler(Caller{Program: "app", Node: "n1"})
	value := "\x00\xffbinary\r\n"
	want(t, "put", call(t, h, "PUT", "/v1/kv/user:1", value), 200, "")
	a := call(t, h, "GET", "/v1/kv/user:1", "")
	want(t, "get", a, 200, "")
	if a.body != value || a.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("get: %q as %s, want %q as application/octet-stream", a.body, a.header.Get("Content-Type"), value)
	}
	want(t, "put", call(t, h, "PUT", "/v1/kv/user:2", "2"), 200, "")
	want(t, "put", call(t, h, "PUT", "/v1/kv/video:1", "v"), 200, "")
	want(t, "put an empty value", call(t, h, "PUT", "/v1/kv/empty", ""), 200, "")
	if a := call(t, h, "GET", "/v1/kv/empty", ""); a.status != 200 || a.body != "" {
		t.Fatalf("an empty value: %d %q", a.status, a.body)
	}

	var keys []string
	after := ""
	for range 3 {
		a := call(t, h, "GET", "/v1/kv?prefix=user:&limit=1&after="+after, "")
		want(t, "list", a, 200, "")
		var l listing
		if err := json.Unmarshal([]byte(a.body), &l); err != nil {
			t.Fatal(err)
		}
		for _, e := range l.Keys {
			keys = append(keys, e.Key+"="+strconv.Itoa(e.Size))
		}
		if !l.More {
			break
		}
		after = l.Next
	}
	if got := strings.Join(keys, " "); got != "user:1=10 user:2=1" {
		t.Fatalf("listing user: one at a time: %s", got)
	}

	want(t, "delete", call(t, h, "DELETE", "/v1/kv/user:1", ""), 204, "")
	want(t, "get a deleted key", call(t, h, "GET", "/v1/kv/user:1", ""), 404, "no_such_key")
	want(t, "delete a deleted key", call(t, h, "DELETE", "/v1/kv/user:1", ""), 404, "no_such_key")
}

// A program never sees another's keys: same key, separate values; its
// listing holds its own keys only.
func TestProgramsHaveTheirOwnKeys(t *testing.T) {
	s := New(Options{Store: testStore(t)})
	a, b := s.Handler(Caller{Program: "a"}), s.Handler(Caller{Program: "b"})
	want(t, "a puts", call(t, a, "PUT", "/v1/kv/secret", "of a"), 200, "")
	want(t, "b reads a's key", call(t, b, "GET", "/v1/kv/secret", ""), 404, "no_such_key")
	want(t, "b deletes a's key", call(t, b, "DELETE", "/v1/kv/secret", ""), 404, "no_such_key")
	if l := call(t, b, "GET", "/v1/kv", ""); l.status != 200 || !strings.Contains(l.body, `"keys":[]`) {
		t.Fatalf("b's listing: %d %s", l.status, l.body)
	}
	want(t, "b puts", call(t, b, "PUT", "/v1/kv/secret", "of b"), 200, "")
	if v := call(t, a, "GET", "/v1/kv/secret", ""); v.body != "of a" {
		t.Fatalf("a's value after b wrote its own: %q", v.body)
	}
}

// A key put with ?ttl= is gone once it expires; bad TTLs are refused.
func TestTTL(t *testing.T) {
	s := New(Options{Store: testStore(t)})
	h := s.Handler(Caller{Program: "app"})
	a := call(t, h, "PUT", "/v1/kv/session?ttl=1", "x")
	want(t, "put with a TTL", a, 200, "")
	var e cluster.KVEntry
	if err := json.Unmarshal([]byte(a.body), &e); err != nil || e.Expires.IsZero() {
		t.Fatalf("the answer to a put with a TTL: %s (%v)", a.body, err)
	}
	want(t, "get before expiry", call(t, h, "GET", "/v1/kv/session", ""), 200, "")
	time.Sleep(1500 * time.Millisecond)
	want(t, "get after expiry", call(t, h, "GET", "/v1/kv/session", ""), 404, "no_such_key")
	for _, ttl := range []string{"0", "-1", "1.5", "abc", strconv.Itoa(MaxTTL + 1)} {
		want(t, "ttl="+ttl, call(t, h, "PUT", "/v1/kv/k?ttl="+ttl, "x"), 400, "bad_request")
	}
}

// Keys outside the documented form are refused with bad_key, before the
// store is asked.
func TestBadKeys(t *testing.T) {
	s := New(Options{Store: testStore(t)})
	h := s.Handler(Caller{Program: "app"})
	for _, key := range []string{"a%2Fb", "a/b", "a%20b", "%C3%A9t%C3%A9", "a%00", "..", ".", strings.Repeat("k", MaxKey+1), "a%3Fb"} {
		for _, method := range []string{"GET", "PUT", "DELETE"} {
			want(t, method+" "+key, call(t, h, method, "/v1/kv/"+key, "v"), 400, "bad_key")
		}
	}
	if a := call(t, h, "GET", "/v1/kv/%C3%A9", ""); !strings.Contains(a.body, "byte 0xc3 at 0") {
		t.Fatalf("a key in UTF-8 is refused as %s, want its first byte named as it is (0xc3)", a.body)
	}
	want(t, "the longest key", call(t, h, "PUT", "/v1/kv/"+strings.Repeat("k", MaxKey), "v"), 200, "")
	want(t, "all the allowed bytes", call(t, h, "PUT", "/v1/kv/aZ09-._~:@", "v"), 200, "")
	want(t, "a bad prefix", call(t, h, "GET", "/v1/kv?prefix=a/b", ""), 400, "bad_key")
	want(t, "a prefix of a key", call(t, h, "GET", "/v1/kv?prefix=.", ""), 200, "")
	want(t, "a bad limit", call(t, h, "GET", "/v1/kv?limit=0", ""), 400, "bad_request")
}

// The quota bounds a value's size (413), the keys and the bytes a
// program holds (403), each program on its own.
func TestQuota(t *testing.T) {
	s := New(Options{Store: testStore(t), Limits: Limits{MaxKeys: 2, MaxValue: 10, MaxBytes: 20}})
	h := s.Handler(Caller{Program: "app"})
	want(t, "a value too large", call(t, h, "PUT", "/v1/kv/k", strings.Repeat("v", 11)), 413, "value_too_large")
	want(t, "the largest value", call(t, h, "PUT", "/v1/kv/k1", strings.Repeat("v", 10)), 200, "")
	want(t, "a second key", call(t, h, "PUT", "/v1/kv/k2", "v"), 200, "")
	want(t, "a third key", call(t, h, "PUT", "/v1/kv/k3", "v"), 403, "quota_exceeded")
	// k1 (12 bytes) + k2 at 2+7 = 21 > 20.
	want(t, "past the bytes", call(t, h, "PUT", "/v1/kv/k2", "vvvvvvv"), 403, "quota_exceeded")
	want(t, "another program", call(t, s.Handler(Caller{Program: "other"}), "PUT", "/v1/kv/k3", "v"), 200, "")
	want(t, "after a delete", call(t, h, "DELETE", "/v1/kv/k1", ""), 204, "")
	want(t, "a third key after a delete", call(t, h, "PUT", "/v1/kv/k3", "v"), 200, "")
}

// limitedOf makes n calls and returns how many were answered 429, each
// a rate_limited error with a Retry-After of a second or more.
func limitedOf(t *testing.T, n int, call func() answer) int {
	t.Helper()
	limited := 0
	for range n {
		a := call()
		if a.status == http.StatusTooManyRequests {
			want(t, "a call past the rate", a, 429, "rate_limited")
			if n, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || n < 1 {
				t.Fatalf("Retry-After %q", a.header.Get("Retry-After"))
			}
			limited++
		}
	}
	return limited
}

// A program past its rate gets 429 with Retry-After; another program's
// calls still go through.
func TestRateLimit(t *testing.T) {
	s := New(Options{Store: testStore(t), Limits: Limits{Rate: 0.5, Burst: 3}})
	flood, calm := s.Handler(Caller{Program: "flood"}), s.Handler(Caller{Program: "calm"})
	limited := limitedOf(t, 10, func() answer { return call(t, flood, "GET", "/v1/properties", "") })
	if limited < 6 {
		t.Fatalf("%d of 10 calls limited at a burst of 3, want 7 or so", limited)
	}
	want(t, "another program", call(t, calm, "PUT", "/v1/kv/k", "v"), 200, "")
	// The same program through another VM shares its limit.
	want(t, "the flood's other VM", call(t, s.Handler(Caller{Program: "flood"}), "GET", "/v1/properties", ""), 429, "rate_limited")
}

// A persistent program's writes carry its token: one that is not the
// program's current token is refused with 409.
func TestStaleTokenIsAConflict(t *testing.T) {
	s := New(Options{Store: testStore(t)})
	h := s.Handler(Caller{Program: "worker", Persistent: true, FencingToken: 7})
	want(t, "a write with a token the store does not know", call(t, h, "PUT", "/v1/kv/k", "v"), 409, "stale_token")
	want(t, "a delete likewise", call(t, h, "DELETE", "/v1/kv/k", ""), 409, "stale_token")
}

// Properties say who the caller is, and only that.
func TestProperties(t *testing.T) {
	s := New(Options{Store: testStore(t)})
	c := Caller{Program: "worker", Node: "n2", IPv4: "10.200.0.2", IPv6: "fd00::2", VCPUs: 2, MemoryMiB: 256, Persistent: true, FencingToken: 3}
	a := call(t, s.Handler(c), "GET", "/v1/properties?program=other", "")
	want(t, "properties", a, 200, "")
	var p Properties
	if err := json.Unmarshal([]byte(a.body), &p); err != nil {
		t.Fatal(err)
	}
	wantP := Properties{Program: "worker", Node: "n2", Addresses: Addresses{"10.200.0.2", "fd00::2"},
		Resources: Resources{2, 256}, Persistent: true, FencingToken: 3}
	if p != wantP {
		t.Fatalf("properties %+v, want %+v", p, wantP)
	}
	a = call(t, s.Handler(Caller{Program: "app", FencingToken: 3}), "GET", "/v1/properties", "")
	if strings.Contains(a.body, "fencing_token") {
		t.Fatalf("an on-demand program's properties carry a token: %s", a.body)
	}
}

// Wrong methods are 405 with Allow, unknown paths 404, and an agent
// without a store answers the kv calls 503: all as JSON errors.
func TestRoutingErrors(t *testing.T) {
	h := New(Options{}).Handler(Caller{Program: "app"})
	a := call(t, h, "POST", "/v1/kv/k", "v")
	want(t, "POST a key", a, 405, "method_not_allowed")
	if a.header.Get("Allow") == "" {
		t.Fatal("a 405 without Allow")
	}
	want(t, "PUT the properties", call(t, h, "PUT", "/v1/properties", "x"), 405, "method_not_allowed")
	want(t, "DELETE the listing", call(t, h, "DELETE", "/v1/kv", ""), 405, "method_not_allowed")
	want(t, "an unknown path", call(t, h, "GET", "/v2/kv/k", ""), 404, "unknown_endpoint")
	want(t, "no store", call(t, h, "GET", "/v1/kv/k", ""), 503, "no_store")
	want(t, "no store, properties", call(t, h, "GET", "/v1/properties", ""), 200, "")
}

// Rewriting a key within the quota is bounded too: past the program's
// bytes written per second (after a burst of its quota), writes are 429
// with Retry-After; reads, and other programs, go on.
func TestWriteRateBoundsRewrites(t *testing.T) {
	s := New(Options{Store: testStore(t), Limits: Limits{MaxValue: 100, MaxBytes: 300, WriteRate: 1}})
	h := s.Handler(Caller{Program: "rewriter"})
	value := strings.Repeat("v", 100)
	limited := limitedOf(t, 10, func() answer { return call(t, h, "PUT", "/v1/kv/k", value) })
	// A burst of the quota (300 bytes): 2 writes of 101, then 1 byte/s.
	if limited < 7 {
		t.Fatalf("%d of 10 rewrites of 101 bytes limited at 1 byte/s after 300, want 8", limited)
	}
	want(t, "a read", call(t, h, "GET", "/v1/kv/k", ""), 200, "")
	want(t, "another program", call(t, s.Handler(Caller{Program: "calm"}), "PUT", "/v1/kv/k", value), 200, "")
}

// A call whose caller left (its program stopped, the stream reset) is no
// fault of the host: nothing is logged as one.
func TestCallerThatLeftIsNotAHostFault(t *testing.T) {
	var logged strings.Builder
	s := New(Options{Store: testStore(t), Log: slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	h := s.Handler(Caller{Program: "app"})
	for _, method := range []string{"PUT", "GET", "DELETE"} {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		r := httptest.NewRequestWithContext(ctx, method, "/v1/kv/k", strings.NewReader("v"))
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	r := httptest.NewRequestWithContext(context.Background(), "GET", "/v1/kv?prefix=k", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.ServeHTTP(httptest.NewRecorder(), r.WithContext(ctx))
	if logged.Len() > 0 {
		t.Fatalf("calls whose caller left were logged as the host's faults:\n%s", logged.String())
	}
}
