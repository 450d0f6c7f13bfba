package daemon

import (
	"flag"
	"io"
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
