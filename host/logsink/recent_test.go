package logsink

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"
)

// Recent passes every record on and keeps the last ones at its level or
// above, with their attributes (WithAttrs' and groups' too) and request
// id.
func TestRecentKeepsTheLastWarnings(t *testing.T) {
	var out bytes.Buffer
	h := NewRecent(slog.NewJSONHandler(&out, nil), slog.LevelWarn, 2)
	log := slog.New(h)
	log.Info("not kept", "request_id", "r0")
	log.Warn("first", "request_id", "r1")
	log.With("program", "web").Error("second", "request_id", "r2", "status", 502)
	log.WithGroup("vm").Warn("third", "request_id", "r3", slog.Group("boot", "phase", "network"))

	got := h.Records()
	if len(got) != 2 {
		t.Fatalf("kept %d records: %+v", len(got), got)
	}
	if got[0].Message != "second" || got[0].Level != slog.LevelError || got[0].RequestID != "r2" ||
		!reflect.DeepEqual(got[0].Attrs, []string{"program=web", "request_id=r2", "status=502"}) {
		t.Errorf("second: %+v", got[0])
	}
	// Inside a group, request_id is the group's, not the record's id.
	if got[1].RequestID != "" || !reflect.DeepEqual(got[1].Attrs, []string{"vm.request_id=r3", "vm.boot.phase=network"}) {
		t.Errorf("third: %+v", got[1])
	}
	// Every record reached the next handler, as JSON.
	lines := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n"))
	if len(lines) != 4 {
		t.Fatalf("passed on %d records:\n%s", len(lines), out.String())
	}
	var first map[string]any
	if err := json.Unmarshal(lines[0], &first); err != nil || first["msg"] != "not kept" || first["request_id"] != "r0" {
		t.Errorf("first record passed on: %s (%v)", lines[0], err)
	}
}

// Debug records reach the next handler only when it takes them.
func TestRecentFollowsTheNextHandlersLevel(t *testing.T) {
	var out bytes.Buffer
	h := NewRecent(slog.NewTextHandler(&out, nil), slog.LevelWarn, 0)
	slog.New(h).Debug("hidden")
	if out.Len() != 0 || len(h.Records()) != 0 {
		t.Fatalf("a debug record went through: %q %+v", out.String(), h.Records())
	}
}
