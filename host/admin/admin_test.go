package admin

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/metrics"
)

// The token is accepted only as exactly "Authorization: Bearer TOKEN";
// the metrics are served behind it.
func TestTokenMustBeABearerToken(t *testing.T) {
	mgr := lifecycle.New(lifecycle.Options{IdleTimeout: -1})
	defer mgr.Close()
	s := &Server{Programs: front.NewPrograms(mgr), Manager: mgr, Token: "s3cret", Metrics: metrics.New(func() int { return 0 }).Handler()}
	h := s.Handler()
	call := func(path string, auth ...string) (int, string) {
		r := httptest.NewRequest("GET", path, nil)
		for _, a := range auth {
			r.Header.Add("Authorization", a)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		body, _ := io.ReadAll(w.Body)
		return w.Code, string(body)
	}
	for _, auth := range [][]string{
		nil,
		{"s3cret"},
		{"Bearer"},
		{"Bearer "},
		{"Bearer wrong"},
		{"Bearer s3cret "},
		{"Basic s3cret"},
		{"Bearer s3cretX"},
		{"Bearer s3cret", "Bearer s3cret"},
	} {
		if code, _ := call("/v1/programs", auth...); code != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d", auth, code)
		}
	}
	if code, body := call("/v1/programs", "Bearer s3cret"); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("right token: %d %s", code, body)
	}
	if code, body := call("/metrics", "Bearer s3cret"); code != 200 || !strings.Contains(body, "ferry_running_vms") {
		t.Fatalf("metrics: %d", code)
	}
	if code, _ := call("/metrics"); code != http.StatusUnauthorized {
		t.Fatalf("metrics without the token: %d", code)
	}
}
