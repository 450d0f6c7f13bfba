package logsink

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// DefaultRecent is how many records a Recent keeps unless told.
const DefaultRecent = 100

// Record is one record of the agent's log as Recent keeps it.
type Record struct {
	Time    time.Time
	Level   slog.Level
	Message string
	// Attrs are the record's attributes as "key=value", groups joined to
	// the key with dots.
	Attrs []string
	// RequestID is the value of the request_id attribute, when the
	// record is about a request.
	RequestID string
}

// Recent is a slog.Handler that passes every record on to another and
// keeps the last ones at or above a level (the warnings and errors a
// status page shows).
type Recent struct {
	next   slog.Handler
	min    slog.Level
	kept   *recentRing
	attrs  []string // from WithAttrs, with their groups
	reqID  string   // a request_id among them
	prefix string   // the groups opened by WithGroup, "a.b."
}

// recentRing is the records a Recent and the handlers derived from it
// keep.
type recentRing struct {
	mu      sync.Mutex
	records []Record // oldest first, at most max
	max     int
}

// NewRecent returns a handler passing records to next and keeping the
// last n at level min or above (DefaultRecent when n is not positive).
func NewRecent(next slog.Handler, min slog.Level, n int) *Recent {
	if n <= 0 {
		n = DefaultRecent
	}
	return &Recent{next: next, min: min, kept: &recentRing{max: n}}
}

// Records returns the kept records, oldest first.
func (h *Recent) Records() []Record {
	h.kept.mu.Lock()
	defer h.kept.mu.Unlock()
	return append([]Record(nil), h.kept.records...)
}

// Enabled implements slog.Handler.
func (h *Recent) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min || h.next.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (h *Recent) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= h.min {
		rec := Record{Time: r.Time, Level: r.Level, Message: r.Message, Attrs: append([]string(nil), h.attrs...), RequestID: h.reqID}
		r.Attrs(func(a slog.Attr) bool {
			rec.Attrs, rec.RequestID = appendAttr(rec.Attrs, rec.RequestID, h.prefix, a)
			return true
		})
		h.kept.add(rec)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

// WithAttrs implements slog.Handler.
func (h *Recent) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = append([]string(nil), h.attrs...)
	for _, a := range attrs {
		c.attrs, c.reqID = appendAttr(c.attrs, c.reqID, h.prefix, a)
	}
	return &c
}

// WithGroup implements slog.Handler.
func (h *Recent) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.prefix = h.prefix + name + "."
	return &c
}

// appendAttr appends a as "key=value" (a group's attributes one by one),
// and returns the request id it carries, if any.
func appendAttr(out []string, reqID, prefix string, a slog.Attr) ([]string, string) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, g := range v.Group() {
			out, reqID = appendAttr(out, reqID, prefix, g)
		}
		return out, reqID
	}
	if a.Key == "" {
		return out, reqID
	}
	if prefix == "" && a.Key == "request_id" {
		reqID = v.String()
	}
	s := v.String()
	if strings.ContainsAny(s, " \"=") {
		s = fmt.Sprintf("%q", s)
	}
	return append(out, prefix+a.Key+"="+s), reqID
}

func (k *recentRing) add(r Record) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.records) >= k.max {
		k.records = append(k.records[:0], k.records[1:]...)
	}
	k.records = append(k.records, r)
}
