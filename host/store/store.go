// Package store fetches content-addressed objects (program code,
// runtimes, data, immutable volumes) for the host agent and caches them
// on its disk. An object is named by the SHA-256 digest of its bytes (a
// Ref); it is looked up in the configured sources in order (file:///DIR
// and http(s)://BASE, each holding BASE/<hex>), streamed to a temporary
// file under the cache, and kept only if its digest is the one asked
// for. The cache is bounded in bytes: the least recently used objects no
// running VM holds are evicted to make room. Concurrent requests for one
// object share one download.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Recorder receives the store's metrics (host/metrics implements it).
type Recorder interface {
	// StoreHit counts a Get served from the cache, StoreMiss one that
	// waited for a download (its own or a shared one).
	StoreHit()
	StoreMiss()
	// StoreDownloaded counts bytes received from a source.
	StoreDownloaded(bytes int64)
	// StoreCacheBytes is the cache's size now.
	StoreCacheBytes(bytes int64)
}

// Options configure a Store.
type Options struct {
	// Sources are the store URLs, tried in order.
	Sources []string
	// Dir is the cache directory (objects/ and tmp/ below it).
	Dir string
	// MaxBytes bounds the cache; an object larger than it is refused.
	MaxBytes int64
	// Client fetches http(s) objects (default: a client without an
	// overall timeout: objects may be large, ctx bounds the wait).
	Client *http.Client
	// ProgressEvery is how many bytes pass between progress lines in the
	// log (default DefaultProgressEvery).
	ProgressEvery int64
	// DownloadTimeout bounds one object's download from all the stores
	// (default DefaultDownloadTimeout). A download outlives the boot that
	// started it (others may be waiting for it), so this is what ends
	// one from a store that stalls.
	DownloadTimeout time.Duration
	Log             *slog.Logger
	Metrics         Recorder // may be nil
}

// Defaults of Options.
const (
	DefaultMaxBytes      = 4 << 30
	DefaultProgressEvery = 16 << 20
	// DefaultDownloadTimeout is an hour: 4 GiB at about 1 MiB/s.
	DefaultDownloadTimeout = time.Hour
)

// Store is the cache and its sources.
type Store struct {
	opt     Options
	sources []source
	objects string // Dir/objects: one file per object, named by its hex digest
	tmp     string // Dir/tmp: downloads in progress
	flight  singleflight.Group

	mu      sync.Mutex
	entries map[Ref]*entry
	total   int64 // bytes of all entries
}

// entry is one cached object.
type entry struct {
	size     int64
	lastUsed time.Time
	pins     int // VMs (or boots) using it now; pinned objects are never evicted
}

// New opens the cache at opt.Dir (creating it), forgets downloads a
// previous agent left unfinished, and evicts down to the bound.
func New(opt Options) (*Store, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.ProgressEvery <= 0 {
		opt.ProgressEvery = DefaultProgressEvery
	}
	if opt.DownloadTimeout <= 0 {
		opt.DownloadTimeout = DefaultDownloadTimeout
	}
	if opt.Client == nil {
		opt.Client = &http.Client{}
	}
	s := &Store{opt: opt, objects: filepath.Join(opt.Dir, "objects"), tmp: filepath.Join(opt.Dir, "tmp"), entries: map[Ref]*entry{}}
	for _, raw := range opt.Sources {
		src, err := parseSource(raw, opt.Client)
		if err != nil {
			return nil, err
		}
		s.sources = append(s.sources, src)
	}
	if err := os.RemoveAll(s.tmp); err != nil {
		return nil, fmt.Errorf("store: clearing %s: %w", s.tmp, err)
	}
	for _, d := range []string{s.objects, s.tmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	files, err := os.ReadDir(s.objects)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	for _, f := range files {
		ref, err := ParseRef(f.Name())
		info, ierr := f.Info()
		if err != nil || string(ref) != f.Name() || ierr != nil || !info.Mode().IsRegular() {
			opt.Log.Warn("store: ignoring a file that is not an object", "path", filepath.Join(s.objects, f.Name()))
			continue
		}
		s.entries[ref] = &entry{size: info.Size(), lastUsed: info.ModTime()}
		s.total += info.Size()
	}
	s.mu.Lock()
	s.evictLocked("")
	s.mu.Unlock()
	return s, nil
}

// Sources returns the store URLs, in the order they are tried.
func (s *Store) Sources() []string {
	out := make([]string, len(s.sources))
	for i, src := range s.sources {
		out[i] = src.String()
	}
	return out
}

// Get returns the path of the object named ref in the cache, fetching it
// first if needed, and pins it: it stays in the cache until release is
// called (once; a VM calls it when it ends). The file must not be
// written.
func (s *Store) Get(ctx context.Context, ref Ref) (path string, release func(), err error) {
	if norm, err := ParseRef(string(ref)); err != nil || norm != ref {
		return "", nil, fmt.Errorf("store: %q is not a normalised ref", ref)
	}
	if path, release, ok := s.pin(ref); ok {
		s.record(func(r Recorder) { r.StoreHit() })
		return path, release, nil
	}
	s.record(func(r Recorder) { r.StoreMiss() })
	for range 3 { // an object evicted between its download and our pin is fetched again
		ch := s.flight.DoChan(string(ref), func() (any, error) {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opt.DownloadTimeout)
			defer cancel()
			return nil, s.fetch(fctx, ref)
		})
		select {
		case <-ctx.Done():
			return "", nil, fmt.Errorf("store: ref %s: %w", ref, ctx.Err())
		case res := <-ch:
			if res.Err != nil {
				return "", nil, res.Err
			}
		}
		if path, release, ok := s.pin(ref); ok {
			return path, release, nil
		}
	}
	return "", nil, fmt.Errorf("store: ref %s was evicted as soon as it was fetched: the cache bound (%d bytes) is too small for the objects in use", ref, s.opt.MaxBytes)
}

// pin takes a reference on a cached object.
func (s *Store) pin(ref Ref) (string, func(), bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[ref]
	if e == nil {
		return "", nil, false
	}
	e.pins++
	e.lastUsed = time.Now()
	path := filepath.Join(s.objects, string(ref))
	now := e.lastUsed
	os.Chtimes(path, now, now) // the order of use survives a restart
	var once sync.Once
	return path, func() {
		once.Do(func() {
			s.mu.Lock()
			e.pins--
			s.evictLocked("")
			s.mu.Unlock()
		})
	}, true
}

// fetch downloads ref from the first source that has it, verifies its
// digest and moves it into the cache. Nothing is kept on failure.
func (s *Store) fetch(ctx context.Context, ref Ref) error {
	if len(s.sources) == 0 {
		return fmt.Errorf("store: ref %s is not in the cache and no store is configured (--store)", ref)
	}
	var errs sourceErrors
	for _, src := range s.sources {
		err := s.fetchFrom(ctx, src, ref)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("store: ref %s: %w", ref, ctx.Err())
		}
		errs = append(errs, fmt.Errorf("%s: %w", src, err))
	}
	return fmt.Errorf("store: ref %s: %w", ref, errs)
}

// sourceErrors are the failures of each store tried, in order: one line,
// "; " between them, and errors.Is finds each (ErrDigest, say).
type sourceErrors []error

func (e sourceErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e sourceErrors) Unwrap() []error { return e }

// ErrDigest marks an object whose bytes do not have the digest asked for.
var ErrDigest = errors.New("digest mismatch")

// fetchFrom streams one source's object into a temporary file, checks its
// size bound and digest, and renames it into the cache.
func (s *Store) fetchFrom(ctx context.Context, src source, ref Ref) error {
	began := time.Now()
	body, size, err := src.open(ctx, ref)
	if err != nil {
		return err
	}
	defer body.Close()
	if size > s.opt.MaxBytes {
		return fmt.Errorf("the object is %d bytes, more than the cache bound of %d (--store-cache-mib)", size, s.opt.MaxBytes)
	}
	tmp, err := os.CreateTemp(s.tmp, string(ref.Short())+"-*")
	if err != nil {
		return err
	}
	kept := false
	defer func() {
		if !kept {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	log := s.opt.Log.With("ref", string(ref), "source", src.String())
	log.Info("store: downloading", "bytes", size)
	h := sha256.New()
	w := &progress{w: io.MultiWriter(tmp, h), every: s.opt.ProgressEvery, log: log, total: size,
		count: func(n int64) { s.record(func(r Recorder) { r.StoreDownloaded(n) }) }}
	// One byte past the bound tells an object too large from one that fits.
	n, err := io.Copy(w, io.LimitReader(body, s.opt.MaxBytes+1))
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", n, err)
	}
	if n > s.opt.MaxBytes {
		return fmt.Errorf("the object is more than the cache bound of %d bytes (--store-cache-mib)", s.opt.MaxBytes)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("got %d bytes, the source announced %d", n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != string(ref) {
		return fmt.Errorf("%w: expected sha256 %s, got %s (%d bytes); nothing was kept", ErrDigest, ref, got, n)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// Read-only, and executable: a program's one file may be the
	// executable itself.
	if err := os.Chmod(tmp.Name(), 0o555); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Rename(tmp.Name(), filepath.Join(s.objects, string(ref))); err != nil {
		return err
	}
	kept = true
	if old := s.entries[ref]; old != nil {
		s.total -= old.size
	}
	s.entries[ref] = &entry{size: n, lastUsed: time.Now()}
	s.total += n
	s.evictLocked(ref)
	log.Info("store: fetched", "bytes", n, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// evictLocked removes the least recently used unpinned objects (never
// keep) until the cache is within its bound.
func (s *Store) evictLocked(keep Ref) {
	defer s.record(func(r Recorder) { r.StoreCacheBytes(s.total) })
	if s.total <= s.opt.MaxBytes {
		return
	}
	refs := make([]Ref, 0, len(s.entries))
	for ref, e := range s.entries {
		if e.pins == 0 && ref != keep {
			refs = append(refs, ref)
		}
	}
	sort.Slice(refs, func(i, j int) bool { return s.entries[refs[i]].lastUsed.Before(s.entries[refs[j]].lastUsed) })
	for _, ref := range refs {
		if s.total <= s.opt.MaxBytes {
			return
		}
		if err := os.Remove(filepath.Join(s.objects, string(ref))); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.opt.Log.Warn("store: evicting", "ref", string(ref), "err", err)
			continue
		}
		s.total -= s.entries[ref].size
		delete(s.entries, ref)
		s.opt.Log.Info("store: evicted", "ref", string(ref))
	}
	if s.total > s.opt.MaxBytes {
		s.opt.Log.Warn("store: the cache is over its bound: the objects in use do not fit", "bytes", s.total, "bound", s.opt.MaxBytes)
	}
}

// Usage returns the cache's size in bytes and its number of objects.
func (s *Store) Usage() (bytes int64, objects int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total, len(s.entries)
}

func (s *Store) record(f func(Recorder)) {
	if s.opt.Metrics != nil {
		f(s.opt.Metrics)
	}
}

// progress counts the bytes written through it and logs every so many.
type progress struct {
	w     io.Writer
	every int64
	log   *slog.Logger
	total int64 // -1: unknown
	done  int64
	next  int64
	count func(int64)
}

func (p *progress) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.done += int64(n)
	p.count(int64(n))
	if p.done >= p.next+p.every {
		p.next = p.done
		p.log.Info("store: download progress", "bytes", p.done, "of", p.total)
	}
	return n, err
}
