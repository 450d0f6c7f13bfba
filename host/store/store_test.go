package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func digest(b []byte) Ref {
	sum := sha256.Sum256(b)
	return Ref(hex.EncodeToString(sum[:]))
}

// counters is a Recorder for tests.
type counters struct{ hits, misses, bytes, cache atomic.Int64 }

func (c *counters) StoreHit()               { c.hits.Add(1) }
func (c *counters) StoreMiss()              { c.misses.Add(1) }
func (c *counters) StoreDownloaded(n int64) { c.bytes.Add(n) }
func (c *counters) StoreCacheBytes(n int64) { c.cache.Store(n) }

func TestParseRef(t *testing.T) {
	hexRef := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in   string
		want Ref
		ok   bool
	}{
		{hexRef, Ref(hexRef), true},
		{"sha256:" + hexRef, Ref(hexRef), true},
		{strings.ToUpper(hexRef), Ref(hexRef), true},
		{hexRef[:63], "", false},
		{hexRef + "0", "", false},
		{strings.Repeat("zz", 32), "", false},
		{"md5:" + hexRef, "", false},
		{"", "", false},
	} {
		got, err := ParseRef(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRef(%q) = %q, %v", tc.in, got, err)
		}
	}
}

// objectServer serves objects by hex digest and counts the GETs.
type objectServer struct {
	mu      sync.Mutex
	objects map[string][]byte
	gets    atomic.Int64
	gate    chan struct{} // when set, every answer waits for it
}

func (o *objectServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.gets.Add(1)
	if o.gate != nil {
		<-o.gate
	}
	o.mu.Lock()
	b, ok := o.objects[r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]]
	o.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Write(b)
}

func newStore(t *testing.T, max int64, sources ...string) (*Store, *counters, string) {
	t.Helper()
	dir := t.TempDir()
	c := &counters{}
	s, err := New(Options{Sources: sources, Dir: dir, MaxBytes: max, Metrics: c})
	if err != nil {
		t.Fatal(err)
	}
	return s, c, dir
}

func TestGetFetchesOnceThenHits(t *testing.T) {
	obj := []byte("print('hello')\n")
	ref := digest(obj)
	srv := &objectServer{objects: map[string][]byte{string(ref): obj}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	s, c, _ := newStore(t, 1<<20, hs.URL+"/objects")

	path, release, err := s.Get(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != string(obj) {
		t.Fatalf("cached object holds %q", b)
	}
	release()
	if _, release2, err := s.Get(context.Background(), ref); err != nil {
		t.Fatal(err)
	} else {
		release2()
	}
	if srv.gets.Load() != 1 || c.hits.Load() != 1 || c.misses.Load() != 1 || c.bytes.Load() != int64(len(obj)) {
		t.Fatalf("gets %d hits %d misses %d bytes %d", srv.gets.Load(), c.hits.Load(), c.misses.Load(), c.bytes.Load())
	}
}

func TestConcurrentGetsShareOneDownload(t *testing.T) {
	obj := []byte(strings.Repeat("x", 100000))
	ref := digest(obj)
	srv := &objectServer{objects: map[string][]byte{string(ref): obj}, gate: make(chan struct{})}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	s, c, _ := newStore(t, 1<<20, hs.URL+"/objects/")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, release, err := s.Get(context.Background(), ref)
			if err == nil {
				release()
			}
			errs <- err
		}()
	}
	for srv.gets.Load() == 0 { // the download has begun; the others wait on it
	}
	close(srv.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if srv.gets.Load() != 1 || c.bytes.Load() != int64(len(obj)) {
		t.Fatalf("%d downloads, %d bytes", srv.gets.Load(), c.bytes.Load())
	}
}

func TestWrongDigestIsRefusedAndNothingKept(t *testing.T) {
	want := digest([]byte("the real thing"))
	srv := &objectServer{objects: map[string][]byte{string(want): []byte("an impostor")}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	s, _, dir := newStore(t, 1<<20, hs.URL)
	_, _, err := s.Get(context.Background(), want)
	if !errors.Is(err, ErrDigest) {
		t.Fatalf("want a digest mismatch, got %v", err)
	}
	got := digest([]byte("an impostor"))
	if !strings.Contains(err.Error(), "expected sha256 "+string(want)) || !strings.Contains(err.Error(), "got "+string(got)) {
		t.Fatalf("the error does not name both digests: %v", err)
	}
	for _, sub := range []string{"objects", "tmp"} {
		if entries, _ := os.ReadDir(filepath.Join(dir, sub)); len(entries) != 0 {
			t.Fatalf("%s holds %d files after a refused download", sub, len(entries))
		}
	}
	if n, objs := s.Usage(); n != 0 || objs != 0 {
		t.Fatalf("usage %d bytes, %d objects", n, objs)
	}
}

func TestSourcesAreTriedInOrder(t *testing.T) {
	obj := []byte("from the second store")
	ref := digest(obj)
	empty := t.TempDir()
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, string(ref)), obj, 0o644)
	s, _, _ := newStore(t, 1<<20, "file://"+empty, "file://"+full)
	path, release, err := s.Get(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if b, _ := os.ReadFile(path); string(b) != string(obj) {
		t.Fatalf("got %q", b)
	}
	_, _, err = s.Get(context.Background(), digest([]byte("nowhere")))
	if err == nil || !strings.Contains(err.Error(), "file://"+empty+": not found") || !strings.Contains(err.Error(), "file://"+full+": not found") {
		t.Fatalf("a missing ref: %v", err)
	}
}

func TestCacheStaysUnderItsBoundEvictingUnpinnedLRU(t *testing.T) {
	dir := t.TempDir()
	var refs []Ref
	for i := range 4 {
		obj := []byte(strings.Repeat(string(rune('a'+i)), 400))
		ref := digest(obj)
		os.WriteFile(filepath.Join(dir, string(ref)), obj, 0o644)
		refs = append(refs, ref)
	}
	s, c, cache := newStore(t, 1000, "file://"+dir)
	ctx := context.Background()
	_, releaseA, err := s.Get(ctx, refs[0]) // pinned throughout
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs[1:] {
		_, release, err := s.Get(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		release()
		if n, _ := s.Usage(); n > 1000 {
			t.Fatalf("cache at %d bytes, bound 1000", n)
		}
	}
	if _, err := os.Stat(filepath.Join(cache, "objects", string(refs[0]))); err != nil {
		t.Fatalf("the pinned object was evicted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cache, "objects", string(refs[1]))); !os.IsNotExist(err) {
		t.Fatalf("the least recently used unpinned object is still there: %v", err)
	}
	if c.cache.Load() > 1000 {
		t.Fatalf("cache metric %d", c.cache.Load())
	}
	releaseA()
	// A fresh store over the same directory knows what is cached.
	again, err := New(Options{Dir: cache, MaxBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if n, objs := again.Usage(); n != 800 || objs != 2 {
		t.Fatalf("reopened cache: %d bytes, %d objects", n, objs)
	}
	// An object larger than the bound is refused.
	big := []byte(strings.Repeat("z", 2000))
	os.WriteFile(filepath.Join(dir, string(digest(big))), big, 0o644)
	if _, _, err := s.Get(ctx, digest(big)); err == nil || !strings.Contains(err.Error(), "cache bound") {
		t.Fatalf("an object over the bound: %v", err)
	}
}

func TestBadSources(t *testing.T) {
	for _, raw := range []string{"ftp://x", "file://relative/dir", "http://", "http://h/p?q=1", "file://host/dir"} {
		if _, err := New(Options{Sources: []string{raw}, Dir: t.TempDir()}); err == nil {
			t.Errorf("%s accepted", raw)
		}
	}
}

// A store that stalls is given up on after the download timeout, and a
// waiter that leaves early gets its own context's error.
func TestStalledDownloadTimesOut(t *testing.T) {
	obj := []byte("slow")
	ref := digest(obj)
	srv := &objectServer{objects: map[string][]byte{string(ref): obj}, gate: make(chan struct{})}
	hs := httptest.NewServer(srv)
	defer func() { close(srv.gate); hs.Close() }()
	s, err := New(Options{Sources: []string{hs.URL}, Dir: t.TempDir(), DownloadTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.Get(ctx, ref); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled Get: %v", err)
	}
	if _, _, err := s.Get(context.Background(), ref); err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("a stalled store: %v", err)
	}
}

// Get takes only a normalised ref: a prefixed or upper-case one is refused
// before any source is asked (it would name a file and a URL that no
// object has).
func TestGetRefusesRefsNotNormalised(t *testing.T) {
	obj := []byte("x")
	ref := digest(obj)
	srv := &objectServer{objects: map[string][]byte{string(ref): obj}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	s, _, _ := newStore(t, 1<<20, hs.URL)
	for _, bad := range []Ref{"sha256:" + ref, Ref(strings.ToUpper(string(ref))), "../../" + ref[6:]} {
		if _, _, err := s.Get(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "not a normalised ref") {
			t.Errorf("Get(%q): want a not-normalised error, got %v", bad, err)
		}
	}
	if n := srv.gets.Load(); n != 0 {
		t.Errorf("the store was asked %d times", n)
	}
}

// A store that redirects (to a signed or nearer URL) is followed; what
// the server at the end sends is kept only with the digest asked for.
func TestRedirectsAreFollowedAndTheDigestDecides(t *testing.T) {
	good := []byte("the real thing")
	ref := digest(good)
	objects := &objectServer{objects: map[string][]byte{string(ref): good}}
	cdn := httptest.NewServer(objects)
	defer cdn.Close()
	impostor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "an impostor") }))
	defer impostor.Close()
	to := cdn.URL
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, to+"/signed"+r.URL.Path, http.StatusFound)
	}))
	defer front.Close()

	s, _, _ := newStore(t, 1<<20, front.URL)
	path, release, err := s.Get(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if b, _ := os.ReadFile(path); string(b) != string(good) || objects.gets.Load() != 1 {
		t.Fatalf("through a redirect: %q, %d GETs at its target", b, objects.gets.Load())
	}

	to = impostor.URL
	other := []byte("another object")
	s2, _, _ := newStore(t, 1<<20, front.URL)
	if _, _, err := s2.Get(context.Background(), digest(other)); !errors.Is(err, ErrDigest) {
		t.Fatalf("a redirect to a server that sends other bytes: %v, want a digest mismatch", err)
	}
}
