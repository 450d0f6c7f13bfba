package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotFound is what a source answers for an object it does not hold;
// the next source is then tried.
var ErrNotFound = errors.New("not found")

// source is one place objects are fetched from. An object's location is
// the source's base followed by its ref's 64 hex digits: BASE/<hex>.
type source interface {
	// open returns the object's bytes and their length (-1: unknown).
	open(ctx context.Context, ref Ref) (io.ReadCloser, int64, error)
	String() string
}

// parseSource reads a --store URL: file:///DIR or http(s)://HOST/PATH.
func parseSource(raw string, client *http.Client) (source, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("store %q: %w", raw, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("store %q: a file URL names a local directory (file:///DIR)", raw)
		}
		if !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("store %q: the directory must be absolute (file:///DIR)", raw)
		}
		return fileSource{dir: filepath.Clean(u.Path)}, nil
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("store %q: no host", raw)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("store %q: a store URL has no query or fragment", raw)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawPath = ""
		return httpSource{base: u.String(), client: client}, nil
	}
	return nil, fmt.Errorf("store %q: want a file://, http:// or https:// URL", raw)
}

// fileSource is a directory holding objects named by their hex digest.
type fileSource struct{ dir string }

func (s fileSource) String() string { return "file://" + s.dir }

func (s fileSource) open(_ context.Context, ref Ref) (io.ReadCloser, int64, error) {
	f, err := os.Open(filepath.Join(s.dir, string(ref)))
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a regular file", f.Name())
	}
	return f, st.Size(), nil
}

// httpSource is an HTTP server answering GET BASE/<hex> with the object.
type httpSource struct {
	base   string
	client *http.Client
}

func (s httpSource) String() string { return s.base }

func (s httpSource) open(ctx context.Context, ref Ref) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/"+string(ref), nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		return nil, 0, ErrNotFound
	case resp.StatusCode != http.StatusOK:
		resp.Body.Close()
		return nil, 0, fmt.Errorf("GET %s/%s: %s", s.base, ref, resp.Status)
	}
	return resp.Body, resp.ContentLength, nil
}
