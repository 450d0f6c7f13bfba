package contract

import (
	"errors"
	"fmt"
	"io/fs"
	"reflect"
	"testing"

	"github.com/ferry-vm/ferry/protocol/message"
)

// A ConfigError crosses the wire as a CONFIG_RESULT and comes back equal
// (but for its cause, which stays where it happened).
func TestConfigErrorRoundTripsThroughTheResult(t *testing.T) {
	sent := &ConfigError{Phase: PhaseLifespan, Field: "entrypoint", Message: "lifespan startup failed", Detail: "Traceback …", Err: fs.ErrNotExist}
	wire := sent.Result().Append(nil)
	var r message.ConfigResult
	if err := r.Unmarshal(wire); err != nil {
		t.Fatal(err)
	}
	got, ok := errors.AsType[*ConfigError](ResultError(&r))
	want := *sent
	want.Err = nil
	if !ok || !reflect.DeepEqual(*got, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
	if err := ResultError(&message.ConfigResult{OK: true}); err != nil {
		t.Fatalf("a success is an error: %v", err)
	}
}

func TestConfigErrorText(t *testing.T) {
	if s := (&ConfigError{Phase: PhaseNetwork, Field: "network.mtu", Message: "too small"}).Error(); s != "network: network.mtu: too small" {
		t.Fatal(s)
	}
	if s := (&ConfigError{Phase: PhaseApp, Message: "no runner"}).Error(); s != "app: no runner" {
		t.Fatal(s)
	}
}

// AsConfigError keeps the phase and field of a ConfigError however deeply
// it is wrapped, and gives any other error the ones the caller names.
func TestAsConfigError(t *testing.T) {
	if AsConfigError(nil, PhaseApp, "") != nil {
		t.Fatal("nil error became a ConfigError")
	}
	inner := NewConfigError(PhaseVolumes, "volumes[0].device", fs.ErrNotExist)
	if got := AsConfigError(fmt.Errorf("setup: %w", inner), PhaseSetup, ""); got != inner {
		t.Fatalf("wrapped ConfigError not found: %#v", got)
	}
	got := AsConfigError(fs.ErrPermission, PhaseApp, "entrypoint")
	if got.Phase != PhaseApp || got.Field != "entrypoint" || got.Message != fs.ErrPermission.Error() || !errors.Is(got, fs.ErrPermission) {
		t.Fatalf("got %#v", got)
	}
}
