package contract

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ferry-vm/ferry/protocol/frame"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// PeerEndGrace is how long Configure, when the session ends before the
// result, waits for its context to say why (see Configure).
const PeerEndGrace = 2 * time.Second

// Configure is the client side of the configuration exchange
// (protocol/SPEC.md §7), the one both configuring sides use: the host
// agent configuring init, and init configuring each ASGI worker. It opens
// the client session over conn with cfg, waits for the peer's HELLO, sends
// doc in a CONFIG frame and waits for the CONFIG_RESULT. It returns the
// session, ready for streams, and the boot timeline of the result.
//
// doc is sent as JSON ([]byte as it is). A doc with a Validate method (a
// *Config) is validated first, so that a document the peer would refuse
// never goes on the wire; documents are at most MaxConfigSize bytes.
//
// A refusal, the peer's or Validate's, is a *ConfigError. Any other
// failure says which step failed; then, and on a refusal, the session is
// closed (and conn with it). The session's CONFIG_RESULT frames are
// Configure's; cfg.OnControl still gets the other control frames (LOG).
//
// Configure waits for the result, for ctx, or for the session to end.
// When the session ends first, it gives ctx PeerEndGrace to end too and
// reports ctx's cause if it does: a caller that cancels ctx with a cause
// when the VM or process it started ends (context.WithCancelCause) gets
// that explanation rather than a closed session's.
func Configure(ctx context.Context, conn io.ReadWriteCloser, cfg mux.Config, doc any) (*mux.Session, []message.TimelineEntry, error) {
	payload, err := encode(doc)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	results := make(chan message.ConfigResult, 1)
	next := cfg.OnControl
	cfg.OnControl = func(t frame.Type, p []byte) {
		if t != frame.TypeConfigResult {
			if next != nil {
				next(t, p)
			}
			return
		}
		var r message.ConfigResult
		if err := r.Unmarshal(append([]byte(nil), p...)); err == nil {
			select {
			case results <- r:
			default: // only the first result counts
			}
		}
	}
	sess := mux.Client(conn, cfg)
	fail := func(err error) (*mux.Session, []message.TimelineEntry, error) {
		sess.Close()
		return nil, nil, err
	}
	if _, err := sess.Handshake(ctx); err != nil {
		return fail(fmt.Errorf("no HELLO from the peer: %w", ended(ctx, sess, err)))
	}
	if err := sess.SendControl(frame.TypeConfig, payload); err != nil {
		select {
		case <-sess.Done():
			// The peer may have read CONFIG and gone: that is a missing
			// result, explained like one below.
		default:
			if !errors.Is(err, mux.ErrSessionClosed) {
				return fail(fmt.Errorf("sending CONFIG: %w", err))
			}
			// The session is closing (Done closes once its goroutines
			// have ended): the same missing result.
		}
	}
	select {
	case r := <-results:
		if err := ResultError(&r); err != nil {
			return fail(err)
		}
		return sess, r.Timeline, nil
	case <-ctx.Done():
		return fail(fmt.Errorf("no CONFIG_RESULT: %w", context.Cause(ctx)))
	case <-sess.Done():
		return fail(fmt.Errorf("no CONFIG_RESULT: %w", ended(ctx, sess, sess.Err())))
	}
}

// encode validates doc if it can and marshals it.
func encode(doc any) ([]byte, error) {
	if v, ok := doc.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return nil, AsConfigError(err, PhaseValidate, "")
		}
	}
	payload, ok := doc.([]byte)
	if !ok {
		var err error
		if payload, err = json.Marshal(doc); err != nil {
			return nil, fmt.Errorf("encoding the configuration: %w", err)
		}
	}
	if len(payload) > MaxConfigSize {
		return nil, fieldErr("(document)", "%d bytes exceeds the %d-byte limit", len(payload), MaxConfigSize)
	}
	return payload, nil
}

// ended explains why waiting on sess failed with err: ctx's cause when ctx
// ended, or ends within PeerEndGrace of the session's end.
func ended(ctx context.Context, sess *mux.Session, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	select {
	case <-sess.Done():
	default:
		return err
	}
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(PeerEndGrace):
		return err
	}
}
