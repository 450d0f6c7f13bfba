package guestapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
)

// A key is 1 to MaxKey bytes of letters, digits and - . _ ~ : @ (the
// characters a URL carries as they are, in a path and in a query), other
// than "." and "..". Slashes are not allowed: "a/b" would be a second
// path segment. Group keys with a separator such as ":" and list them by
// prefix.
func checkKey(key string) error {
	if key == "" || len(key) > MaxKey {
		return fmt.Errorf("key %.40q: want 1 to %d bytes", key, MaxKey)
	}
	if key == "." || key == ".." {
		return fmt.Errorf("key %q: not a key", key)
	}
	if i := badByte(key); i >= 0 {
		return fmt.Errorf("key %.40q: byte %s at %d is not allowed (letters, digits and - . _ ~ : @)", key, byteName(key[i]), i)
	}
	return nil
}

// badByte is the index of the first byte of s that no key holds, or -1.
func badByte(s string) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == ':' || c == '@'
		if !ok {
			return i
		}
	}
	return -1
}

// byteName names c in a message: quoted when it is printable ASCII, in
// hex otherwise (a byte of UTF-8 is not a character).
func byteName(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("%#x", c)
}

func badKey(err error) apiError {
	return apiError{http.StatusBadRequest, "bad_key", err.Error()}
}

func badRequest(format string, a ...any) apiError {
	return apiError{http.StatusBadRequest, "bad_request", fmt.Sprintf(format, a...)}
}

// keyCall answers the errors of a call on key that come before the
// store's: a bad key, no store.
func (h *handler) keyCall(w http.ResponseWriter, key string) bool {
	if err := checkKey(key); err != nil {
		writeError(w, badKey(err))
		return false
	}
	if h.s.store == nil {
		writeError(w, errNoStore)
		return false
	}
	return true
}

// get answers a key's value, as stored.
func (h *handler) get(w http.ResponseWriter, r *http.Request, key string) {
	if !h.keyCall(w, key) {
		return
	}
	v, err := h.s.store.KVGet(r.Context(), h.c.Program, key)
	if err != nil {
		writeError(w, h.storeError(r, err))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(v)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(v)
	}
}

// put stores the body under key, with ?ttl=SECONDS an expiry.
func (h *handler) put(w http.ResponseWriter, r *http.Request, key string) {
	if !h.keyCall(w, key) {
		return
	}
	ttl, err := parseTTL(r.URL.Query().Get("ttl"))
	if err != nil {
		writeError(w, badRequest("%v", err))
		return
	}
	limit := h.s.limits.MaxValue
	tooBig := apiError{http.StatusRequestEntityTooLarge, "value_too_large", fmt.Sprintf("a value is at most %d bytes", limit)}
	if r.ContentLength > int64(limit) {
		writeError(w, tooBig)
		return
	}
	value, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		writeError(w, badRequest("reading the value: %v", err))
		return
	}
	if len(value) > limit {
		writeError(w, tooBig)
		return
	}
	if !admit(w, h.s.limiter(h.c.Program, time.Now()).bytes, len(key)+len(value), errWriteRate) {
		return
	}
	l := h.s.limits
	err = h.s.store.KVSet(r.Context(), h.c.Program, key, value, cluster.KVWrite{Token: h.token(), TTL: ttl,
		Quota: cluster.Quota{Keys: l.MaxKeys, Bytes: l.MaxBytes}})
	if err != nil {
		writeError(w, h.storeError(r, err))
		return
	}
	e := cluster.KVEntry{Key: key, Size: len(value)}
	if ttl > 0 {
		e.Expires = time.Now().Add(ttl).UTC().Truncate(time.Millisecond)
	}
	writeJSON(w, http.StatusOK, e)
}

// parseTTL reads ?ttl=: whole seconds, 1 to MaxTTL (none when empty).
func parseTTL(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	s, err := strconv.Atoi(v)
	if err != nil || s < 1 || s > MaxTTL {
		return 0, fmt.Errorf("ttl %.20q: want whole seconds from 1 to %d", v, MaxTTL)
	}
	return time.Duration(s) * time.Second, nil
}

// delete removes a key.
func (h *handler) delete(w http.ResponseWriter, r *http.Request, key string) {
	if !h.keyCall(w, key) {
		return
	}
	if err := h.s.store.KVDelete(r.Context(), h.c.Program, key, h.token()); err != nil {
		writeError(w, h.storeError(r, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listing is the answer of GET /v1/kv.
type listing struct {
	Keys []cluster.KVEntry `json:"keys"`
	// More says that keys follow: ask again with after=Next.
	More bool   `json:"more"`
	Next string `json:"next,omitempty"`
}

// list answers the program's keys under ?prefix=, a page of ?limit= after
// ?after=.
func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prefix, after := q.Get("prefix"), q.Get("after")
	for name, v := range map[string]string{"prefix": prefix, "after": after} {
		if v == "" {
			continue
		}
		// A part of a key: its bytes, not its whole form ("." is a prefix).
		if i := badByte(v); i >= 0 || len(v) > MaxKey {
			writeError(w, badKey(fmt.Errorf("%s %.40q: want at most %d bytes of letters, digits and - . _ ~ : @", name, v, MaxKey)))
			return
		}
	}
	limit := DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			writeError(w, badRequest("limit %.20q: want 1 to %d", v, MaxListLimit))
			return
		}
		limit = n
	}
	if h.s.store == nil {
		writeError(w, errNoStore)
		return
	}
	keys, more, err := h.s.store.KVList(r.Context(), h.c.Program, prefix, after, limit)
	if err != nil {
		writeError(w, h.storeError(r, err))
		return
	}
	out := listing{Keys: keys, More: more}
	if out.Keys == nil {
		out.Keys = []cluster.KVEntry{}
	}
	if more {
		out.Next = keys[len(keys)-1].Key
	}
	writeJSON(w, http.StatusOK, out)
}

// token is the fencing token the program's writes carry.
func (h *handler) token() int64 {
	if h.c.Persistent {
		return h.c.FencingToken
	}
	return 0
}

// storeError maps a store error of r, and logs those that are the
// host's fault (not a caller that left, its program stopped).
func (h *handler) storeError(r *http.Request, err error) apiError {
	e := storeError(err)
	left := r.Context().Err() != nil && errors.Is(err, context.Canceled)
	if e.status >= 500 && !left && !errors.Is(err, cluster.ErrNoQuorum) {
		h.s.log.Warn("guest API: store", "program", h.c.Program, "err", err)
	}
	return e
}
