package daemon

import (
	"context"
	"encoding/json"
	"maps"
	"slices"

	"github.com/ferry-vm/ferry/host/manifest"
)

// reloadLoop re-reads the configuration file each time a value arrives on
// cfg.Reload (SIGHUP) until ctx ends; applied is the configuration the
// agent started with. The service manager hears RELOADING=1, then READY=1
// again.
func (a *agent) reloadLoop(ctx context.Context, applied *manifest.File, status string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.cfg.Reload:
		}
		a.notify.reloading()
		applied = a.reload(ctx, applied)
		a.notify.ready(status)
	}
}

// reload reads the configuration file again and applies its programs'
// changes: programs added are deployed, programs changed are redeployed
// (a persistent one restarts as it now is), programs no longer in the file
// are deleted; programs deployed through the API are left alone. The
// agent's own settings (listen, idle_timeout, max_running, limits) take
// effect at its next start: a change to them is reported, not applied. A
// file that does not load changes nothing. It returns the configuration
// now applied and logs what changed.
func (a *agent) reload(ctx context.Context, applied *manifest.File) *manifest.File {
	path := a.cfg.ConfigPath
	if path == "" || a.cluster == nil {
		a.log.Warn("reload: nothing to reload, the agent serves no configuration file")
		return applied
	}
	file, err := manifest.Load(path)
	if err != nil {
		a.log.Error("reload: the configuration is refused, the agent goes on as it was", "file", path, "err", err)
		return applied
	}
	d := diffPrograms(applied.Programs, file.Programs)
	next := *applied
	next.Programs = maps.Clone(applied.Programs)
	failed := false
	if len(d.added)+len(d.changed) > 0 {
		put := map[string]*manifest.Program{}
		for _, id := range append(slices.Clone(d.added), d.changed...) {
			put[id] = file.Programs[id]
		}
		if err := a.cluster.catalog.LoadFile(ctx, put); err != nil {
			a.log.Error("reload: deploying the file's programs", "programs", slices.Sorted(maps.Keys(put)), "err", err)
			failed = true
		} else {
			maps.Copy(next.Programs, put)
		}
	}
	for _, id := range d.removed {
		if err := a.cluster.catalog.Delete(ctx, id); err != nil {
			a.log.Error("reload: deleting a program no longer in the file", "program", id, "err", err)
			failed = true
			continue
		}
		delete(next.Programs, id)
	}
	pending := restartSettings(applied, file)
	if len(pending) > 0 {
		a.log.Warn("reload: settings changed in the file take effect at the agent's next start", "settings", pending)
	}
	msg := "configuration reloaded"
	if failed {
		msg = "configuration reloaded in part"
	}
	a.log.Info(msg, "file", path, "added", d.added, "changed", d.changed, "removed", d.removed,
		"unchanged", d.unchanged, "pending_restart", pending)
	return &next
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
