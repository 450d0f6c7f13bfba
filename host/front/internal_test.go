package front

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/manifest"
)

// ServeProgram reaches a program that is not on HTTP, booting it, at the
// path given with an empty root_path; from outside, paths under
// ReservedPrefix are refused; Changed hears of deploys and deletes in
// order.
func TestServeProgramAndReservedPaths(t *testing.T) {
	f := newFront(t, &backendtest.Backend{}, lifecycle.Options{}, "")
	var changes []string
	f.programs.Changed = func(id string, m *manifest.Program) {
		changes = append(changes, id+":"+map[bool]string{true: "deployed", false: "deleted"}[m != nil])
	}
	f.deploy(t, "hello", manifest.On{HTTP: true})
	f.deploy(t, "cron", manifest.On{Triggers: manifest.Triggers{Schedule: "@every 1m"}})
	rt := &Router{Programs: f.programs, Manager: f.manager, Log: slog.New(slog.DiscardHandler)}

	for _, id := range []string{"hello", "cron"} {
		w := httptest.NewRecorder()
		rt.ServeProgram(w, httptest.NewRequest("POST", "/_ferry/event", strings.NewReader(`{"x":1}`)), id)
		var seen backendtest.Seen
		json.Unmarshal(w.Body.Bytes(), &seen)
		if w.Code != 200 || seen.Method != "POST" || seen.Path != "/_ferry/event" || seen.RootPath != "" || seen.BodyBytes != 7 {
			t.Errorf("%s: %d %+v", id, w.Code, seen)
		}
	}
	w := httptest.NewRecorder()
	rt.ServeProgram(w, httptest.NewRequest("POST", "/_ferry/event", nil), "nope")
	if w.Code != http.StatusNotFound {
		t.Errorf("an unknown program: %d", w.Code)
	}
	// From outside: not on HTTP, or a reserved path.
	for _, c := range []struct{ path, host string }{{"/vm/cron/", ""}, {"/vm/hello/_ferry/event", ""}, {"/_ferry/event", "hello.example.org"}} {
		if status, _, doc, _ := f.get(t, c.path, c.host); status != http.StatusNotFound {
			t.Errorf("%s (host %q): %d %v", c.path, c.host, status, doc)
		}
	}
	if status, _, _, _ := f.get(t, "/vm/hello/_ferryx", ""); status != 200 {
		t.Errorf("a path beside the reserved prefix: %d", status)
	}
	if err := f.programs.Delete(t.Context(), "cron"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(changes, " "); got != "hello:deployed cron:deployed cron:deleted" {
		t.Errorf("changes: %s", got)
	}
}

// A path that a program's own server (nginx merges slashes and resolves
// dot segments) would take for one under ReservedPrefix is refused too,
// however it is spelled; only the exact prefix was before.
func TestReservedPathSpellings(t *testing.T) {
	f := newFront(t, &backendtest.Backend{}, lifecycle.Options{}, "")
	f.deploy(t, "hello", manifest.On{HTTP: true})
	for _, c := range []struct{ path, host string }{
		{"/vm/hello//_ferry/event", ""},
		{"/vm/hello/x/../_ferry/event", ""},
		{"/vm/hello/./_ferry/event", ""},
		{"/vm/hello/_ferry%2Fevent", ""},
		{"/vm/hello/%5Fferry/event", ""},
		{"/vm/hello/%2F_ferry/event", ""},
		{"/vm/hello/_ferry", ""},
		{"/vm/hello/_FERRY/event", ""},
		{"/vm/hello/_Ferry", ""},
		{"//_ferry/event", "hello.example.org"},
		{"/.//_ferry//event", "hello.example.org"},
	} {
		if status, seen, doc, _ := f.get(t, c.path, c.host); status != http.StatusNotFound {
			t.Errorf("%s (host %q): %d, the program saw %q %v", c.path, c.host, status, seen.Path, doc)
		}
	}
	for _, p := range []string{"/vm/hello/_ferryx", "/vm/hello/a/_ferry/event", "/vm/hello/_ferry.txt"} {
		if status, _, _, _ := f.get(t, p, ""); status != 200 {
			t.Errorf("%s, beside the reserved prefix: %d", p, status)
		}
	}
}
