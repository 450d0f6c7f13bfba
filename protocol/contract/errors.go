package contract

import (
	"errors"

	"github.com/ferry-vm/ferry/protocol/message"
)

// Phases of a configuration, as a ConfigError names them: the host's own
// validation and init's are PhaseValidate; then init's setup phases in
// order, then the program's start (an ASGI worker reports PhaseLifespan
// itself when its app's lifespan startup fails).
const (
	PhaseValidate = "validate"
	PhaseHostname = "hostname"
	PhaseNetwork  = "network"
	PhaseVolumes  = "volumes"
	PhaseCode     = "code"
	PhaseData     = "data"
	PhaseSSH      = "ssh"
	PhaseSetup    = "setup" // a setup failure no phase claimed
	PhaseApp      = "app"
	PhaseLifespan = "lifespan"
)

// ConfigError is a configuration that failed, in the shape CONFIG_RESULT
// carries it (protocol/SPEC.md §7): the phase and the configuration field
// at fault, a one-line message for people and the detail (a traceback,
// the program's last output lines). It is the one error type of the
// configure path on both sides: validation, each setup phase, the
// program's start, and what the host gets back.
type ConfigError struct {
	Phase   string // a Phase constant, or one a runner names (lifespan)
	Field   string // the configuration field at fault, e.g. network.ipv4.address; may be empty
	Message string
	Detail  string
	// Err is the cause, on the side where it happened (for errors.Is and
	// errors.As there); it does not travel.
	Err error
}

// NewConfigError is a failure at phase and field caused by err, whose
// text is the message.
func NewConfigError(phase, field string, err error) *ConfigError {
	return &ConfigError{Phase: phase, Field: field, Message: err.Error(), Err: err}
}

// Error says "phase: field: message" (without the field when there is
// none).
func (e *ConfigError) Error() string {
	if e.Field == "" {
		return e.Phase + ": " + e.Message
	}
	return e.Phase + ": " + e.Field + ": " + e.Message
}

// Unwrap returns the cause, if this side knows it.
func (e *ConfigError) Unwrap() error { return e.Err }

// Result is the CONFIG_RESULT that reports e.
func (e *ConfigError) Result() *message.ConfigResult {
	return &message.ConfigResult{Phase: []byte(e.Phase), Field: []byte(e.Field), Message: []byte(e.Message), Detail: []byte(e.Detail)}
}

// AsConfigError returns err as a *ConfigError: the one it is or wraps, or
// else a new one at phase and field with err's text as the message. It is
// nil when err is.
func AsConfigError(err error, phase, field string) *ConfigError {
	if err == nil {
		return nil
	}
	if cerr, ok := errors.AsType[*ConfigError](err); ok {
		return cerr
	}
	return NewConfigError(phase, field, err)
}

// ResultError returns the *ConfigError a CONFIG_RESULT reports, or nil for
// a success. Its strings are copies: r may alias a frame buffer.
func ResultError(r *message.ConfigResult) error {
	if r.OK {
		return nil
	}
	return &ConfigError{Phase: string(r.Phase), Field: string(r.Field), Message: string(r.Message), Detail: string(r.Detail)}
}
