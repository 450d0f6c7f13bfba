package admin

import (
	"encoding/base64"
	"io"
	"log/slog"
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

// The status page is behind the token too; a browser may give it as the
// password of HTTP Basic credentials (asked for by the 401), which the
// API itself does not take.
func TestStatusPageNeedsTheToken(t *testing.T) {
	mgr := lifecycle.New(lifecycle.Options{IdleTimeout: -1})
	defer mgr.Close()
	s := &Server{Programs: front.NewPrograms(mgr), Manager: mgr, Token: "s3cret", Log: slog.New(slog.DiscardHandler)}
	h := s.Handler()
	basic := func(user, password string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
	}
	for _, c := range []struct {
		path, auth string
		code       int
	}{
		{"/status", "", http.StatusUnauthorized},
		{"/status", basic("ferry", "wrong"), http.StatusUnauthorized},
		{"/status", "Basic s3cret", http.StatusUnauthorized},
		{"/status", basic("ferry", "s3cret"), http.StatusOK},
		{"/status", basic("", "s3cret"), http.StatusOK},
		{"/status", "Bearer s3cret", http.StatusOK},
		{"/v1/programs", basic("ferry", "s3cret"), http.StatusUnauthorized},
	} {
		r := httptest.NewRequest("GET", c.path, nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.code {
			t.Errorf("%s with %q: %d, want %d", c.path, c.auth, w.Code, c.code)
		}
		if c.path == "/status" && w.Code == http.StatusUnauthorized && !strings.Contains(strings.Join(w.Header().Values("WWW-Authenticate"), "; "), "Basic") {
			t.Errorf("%s with %q: no Basic challenge: %q", c.path, c.auth, w.Header().Values("WWW-Authenticate"))
		}
		if w.Code == http.StatusOK && !strings.Contains(w.Body.String(), "No programs are deployed.") {
			t.Errorf("the page: %s", w.Body.String())
		}
	}
}
