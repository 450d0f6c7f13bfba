package daemon

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/ferry-vm/ferry/host/lifecycle"
	"github.com/ferry-vm/ferry/host/store"
)

// StoreOptions say where programs' objects named by ref come from.
type StoreOptions struct {
	// URLs are the stores (--store, repeatable), tried in order.
	URLs []string
	// CacheMiB bounds the cache in STATE/store (--store-cache-mib).
	CacheMiB int64
}

// register adds the store's flags.
func (o *StoreOptions) register(fs *flag.FlagSet) {
	fs.Func("store", "a store of objects named by sha256 (file:///DIR or http(s)://HOST/PATH holding BASE/<hex>); repeat for several, tried in order", func(s string) error {
		o.URLs = append(o.URLs, s)
		return nil
	})
	fs.Int64Var(&o.CacheMiB, "store-cache-mib", store.DefaultMaxBytes>>20, "bound of the cache of fetched objects in STATE/store, in MiB (least recently used objects no VM uses are evicted)")
}

// openStore opens the cache under stateDir when stores are configured;
// without any, programs that name objects by ref fail to boot with
// lifecycle.ErrNoStore (and nothing is written under stateDir).
func openStore(o StoreOptions, stateDir string, log *slog.Logger, rec store.Recorder) (lifecycle.Objects, error) {
	if len(o.URLs) == 0 {
		return nil, nil
	}
	if o.CacheMiB <= 0 {
		return nil, &ConfigError{errors.New("--store-cache-mib must be positive")}
	}
	s, err := store.New(store.Options{Sources: o.URLs, Dir: filepath.Join(stateDir, "store"), MaxBytes: o.CacheMiB << 20, Log: log, Metrics: rec})
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("--store: %w", err)}
	}
	log.Info("store: objects fetched from", "stores", s.Sources(), "cache", filepath.Join(stateDir, "store"), "bound_mib", o.CacheMiB)
	return s, nil
}
