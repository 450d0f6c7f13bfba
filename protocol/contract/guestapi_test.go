package contract

import (
	"errors"
	"strings"
	"testing"
)

// api_address: a loopback IP:PORT other than the executable's PORT; the
// the default (init's) when it is absent.
func TestAPIAddress(t *testing.T) {
	exe := strings.Replace(good, `"interface": "asgi",
  "entrypoint": "main:app",`, `"interface": "executable",
  "entrypoint": "server", "port": 9000,`, 1)
	cases := []struct {
		name, doc, api, want, badField string
	}{
		{name: "default", doc: good, want: ""},
		{name: "another loopback port", doc: good, api: "127.0.0.1:9999", want: "127.0.0.1:9999"},
		{name: "ipv6 loopback", doc: good, api: "[::1]:7052", want: "[::1]:7052"},
		{name: "executable elsewhere", doc: exe, api: "127.0.0.1:8080", want: "127.0.0.1:8080"},
		{name: "not loopback", doc: good, api: "10.0.0.2:7052", badField: "api_address"},
		{name: "no port", doc: good, api: "127.0.0.1", badField: "api_address"},
		{name: "port 0", doc: good, api: "127.0.0.1:0", badField: "api_address"},
		{name: "a name", doc: good, api: "localhost:7052", badField: "api_address"},
		{name: "the executable's port", doc: exe, api: "127.0.0.1:9000", badField: "api_address"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := c.doc
			if c.api != "" {
				doc = strings.Replace(doc, `"workers": 2`, `"workers": 2, "api_address": "`+c.api+`"`, 1)
			}
			cfg, err := Parse([]byte(doc))
			if c.badField != "" {
				var ferr *ConfigError
				if !errors.As(err, &ferr) || ferr.Field != c.badField {
					t.Fatalf("got %v, want an error on %s", err, c.badField)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.API != c.want {
				t.Errorf("api_address %q, want %q", cfg.API, c.want)
			}
		})
	}
	if got := APIURL(DefaultAPIAddress); got != "http://127.0.0.1:7052" {
		t.Errorf("APIURL %q", got)
	}
}
