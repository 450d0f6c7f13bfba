package daemon

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/front"
	"github.com/ferry-vm/ferry/host/manifest"
)

// A flag given on the command line wins over the configuration file,
// which wins over the default; values out of range are refused.
func TestLimitFlagsResolve(t *testing.T) {
	parse := func(file manifest.Limits, args ...string) (Limits, error) {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := ServeFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.limits.resolve(fs, file)
	}
	file := manifest.Limits{MaxConcurrent: 100, QueueTimeout: manifest.Duration{Duration: time.Second},
		KeepaliveTimeout: manifest.Duration{Duration: 5 * time.Second}, LogRate: 7}
	l, err := parse(file, "--max-concurrent", "20", "--body-timeout", "3s")
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{
		Conn:     front.ConnLimits{Header: front.DefaultHeaderTimeout, Body: 3 * time.Second, Send: front.DefaultSendTimeout, Keepalive: 5 * time.Second},
		Requests: front.RequestLimits{MaxConcurrent: 20, QueueTimeout: time.Second},
		LogRate:  7,
	}
	if l != want {
		t.Fatalf("got %+v\nwant %+v", l, want)
	}
	for _, args := range [][]string{{"--max-concurrent", "0"}, {"--max-concurrent", "2000"}, {"--queue-timeout", "0s"}, {"--send-timeout", "-1s"}} {
		if _, err := parse(manifest.Limits{}, args...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// The network flags reach the backend's options; a bad prefix or resolver
// is a configuration error naming its flag.
func TestNetworkFlags(t *testing.T) {
	code := t.TempDir()
	cfg, err := flagConfig(t, RunFlags, "--ipv6-prefix", "2001:db8:7::/64", "--uplink", "eth1", "--dns", "192.0.2.53,2001:db8::53", code, "main:app")
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.BackendOptions
	if o.IPv6Prefix.String() != "2001:db8:7::/64" || o.Uplink != "eth1" || len(o.DNS) != 2 || !usesNetwork(cfg) {
		t.Fatalf("options %+v", o)
	}
	if cfg, _ := flagConfig(t, RunFlags, code, "main:app"); usesNetwork(cfg) {
		t.Error("no network flag, no network program: the network is prepared at start")
	}
	for flagValue, want := range map[[2]string]string{
		{"--ipv6-prefix", "2001:db8:7::1/64"}: "--ipv6-prefix: 2001:db8:7::1/64 has bits set",
		{"--ipv6-prefix", "2001:db8:7::/120"}: "--ipv6-prefix: 2001:db8:7::/120 is too small",
		{"--ipv6-prefix", "10.0.0.0/8"}:       "--ipv6-prefix: 10.0.0.0/8 is not an IPv6 prefix",
		{"--dns", "192.0.2.53,dns.example"}:   `--dns: "dns.example" is not an IP address`,
	} {
		_, err := flagConfig(t, RunFlags, flagValue[0], flagValue[1], code, "main:app")
		var cerr *ConfigError
		if !errors.As(err, &cerr) || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%v: %v, want %q", flagValue, err, want)
		}
	}
}
