package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode"

	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/internal/lines"
)

// reloadLoop re-reads the configuration file each time a value arrives on
// cfg.Reload (SIGHUP) until ctx ends; applied is the configuration the
// agent started with, serving the status line it serves under. The
// service manager hears RELOADING=1, then READY=1 again whatever the
// outcome (a reload that fails leaves the agent serving as it was, which
// is what READY=1 says), with a STATUS= that says the outcome: systemctl
// status shows "reload failed: ..." until the next reload succeeds.
func (a *agent) reloadLoop(ctx context.Context, applied *manifest.File, serving string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.cfg.Reload:
		}
		a.notify.reloading()
		var err error
		applied, err = a.reload(ctx, applied)
		a.notify.ready(reloadStatus(err, len(applied.Programs), serving))
	}
}

// errNothingToReload is reload's answer when the agent serves no
// configuration file (run, or serve without --config).
var errNothingToReload = errors.New("nothing to reload: the agent serves no configuration file")

// errReloadedInPart is reload's answer when the file loaded but some of
// its programs' changes failed (each is logged).
var errReloadedInPart = errors.New("reload failed in part")

// maxStatusError bounds the error a STATUS= line carries (the whole one
// is in the log).
const maxStatusError = 200

// reloadStatus is the status line after a reload: its outcome, then what
// the agent serves.
func reloadStatus(err error, programs int, serving string) string {
	switch {
	case err == nil:
		return fmt.Sprintf("configuration reloaded: %d programs from the file; %s", programs, serving)
	case errors.Is(err, errNothingToReload):
		return err.Error() + "; " + serving
	case errors.Is(err, errReloadedInPart):
		return statusText(err.Error(), maxStatusError) + "; " + serving + " (the rest as before)"
	default:
		return "reload failed: " + statusText(err.Error(), maxStatusError) + "; " + serving + " as before"
	}
}

// statusText is s as one line of at most max bytes (cut at a character,
// with "...") of UTF-8 without controls: a STATUS= assignment ends at a
// newline or CR, systemd drops a whole message with a NUL in it (READY=1
// with it: the error can quote a configuration file's program id, which
// JSON lets hold any character) and a STATUS= that is not UTF-8. Each
// control is a space; each byte that is not UTF-8 is U+FFFD.
func statusText(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return lines.Shorten(strings.Join(strings.Fields(s), " "), max)
}

// reload reads the configuration file again and applies its programs'
// changes: programs added are deployed, programs changed are redeployed
// (a persistent one restarts as it now is), programs no longer in the file
// are deleted; programs deployed through the API are left alone. The
// agent's own settings (listen, idle_timeout, max_running, limits) take
// effect at its next start: a change to them is reported, not applied. A
// file that does not load changes nothing. It returns the configuration
// now applied, and an error (logged at Error) when the file was refused
// or some of its changes failed (errReloadedInPart), or when there is no
// file (errNothingToReload).
func (a *agent) reload(ctx context.Context, applied *manifest.File) (*manifest.File, error) {
	path := a.cfg.ConfigPath
	if path == "" || a.cluster == nil {
		a.log.Warn("reload: " + errNothingToReload.Error())
		return applied, errNothingToReload
	}
	file, err := manifest.Load(path)
	if err != nil {
		a.log.Error("reload: the configuration is refused, the agent goes on as it was", "file", path, "err", err)
		return applied, err
	}
	d := diffPrograms(applied.Programs, file.Programs)
	next := *applied
	next.Programs = maps.Clone(applied.Programs)
	var failed []error
	if len(d.added)+len(d.changed) > 0 {
		put := map[string]*manifest.Program{}
		for _, id := range append(slices.Clone(d.added), d.changed...) {
			put[id] = file.Programs[id]
		}
		if err := a.cluster.catalog.LoadFile(ctx, put); err != nil {
			a.log.Error("reload: deploying the file's programs", "programs", slices.Sorted(maps.Keys(put)), "err", err)
			failed = append(failed, fmt.Errorf("deploying %s: %w", strings.Join(slices.Sorted(maps.Keys(put)), ", "), err))
		} else {
			maps.Copy(next.Programs, put)
		}
	}
	for _, id := range d.removed {
		if err := a.cluster.catalog.Delete(ctx, id); err != nil {
			a.log.Error("reload: deleting a program no longer in the file", "program", id, "err", err)
			failed = append(failed, fmt.Errorf("deleting %s: %w", id, err))
			continue
		}
		delete(next.Programs, id)
	}
	pending := restartSettings(applied, file)
	if len(pending) > 0 {
		a.log.Warn("reload: settings changed in the file take effect at the agent's next start", "settings", pending)
	}
	attrs := []any{"file", path, "added", d.added, "changed", d.changed, "removed", d.removed,
		"unchanged", d.unchanged, "pending_restart", pending}
	if len(failed) > 0 {
		a.log.Error("configuration reloaded in part", attrs...)
		return &next, fmt.Errorf("%w: %w", errReloadedInPart, errors.Join(failed...))
	}
	a.log.Info("configuration reloaded", attrs...)
	return &next, nil
}

// programsDiff is how a configuration's programs differ from the ones
// applied, each list sorted by id.
type programsDiff struct {
	added, changed, removed []string
	unchanged               int
}

// diffPrograms compares two configurations' programs by their JSON
// documents (what the cluster stores).
func diffPrograms(old, now map[string]*manifest.Program) programsDiff {
	var d programsDiff
	for _, id := range slices.Sorted(maps.Keys(now)) {
		prev, ok := old[id]
		switch {
		case !ok:
			d.added = append(d.added, id)
		case !sameJSON(prev, now[id]):
			d.changed = append(d.changed, id)
		default:
			d.unchanged++
		}
	}
	for _, id := range slices.Sorted(maps.Keys(old)) {
		if _, ok := now[id]; !ok {
			d.removed = append(d.removed, id)
		}
	}
	return d
}

// restartSettings names the agent's settings that differ between two
// configurations (they apply at the next start).
func restartSettings(old, now *manifest.File) []string {
	var names []string
	if old.Listen != now.Listen {
		names = append(names, "listen")
	}
	if old.IdleTimeout != now.IdleTimeout {
		names = append(names, "idle_timeout")
	}
	if old.MaxRunning != now.MaxRunning {
		names = append(names, "max_running")
	}
	if !sameJSON(old.Limits, now.Limits) {
		names = append(names, "limits")
	}
	return names
}

// sameJSON reports whether two values encode to the same JSON.
func sameJSON(a, b any) bool {
	ja, erra := json.Marshal(a)
	jb, errb := json.Marshal(b)
	return erra == nil && errb == nil && string(ja) == string(jb)
}
