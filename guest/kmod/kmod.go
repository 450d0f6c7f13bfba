// Package kmod loads kernel modules the way modprobe would, without
// modprobe: it reads modules.dep under /lib/modules/VERSION, orders a
// module's dependencies before it, decompresses .ko.xz, .ko.zst and .ko.gz
// in process (the stock Debian kernel refuses finit_module's compressed
// flag) and loads each with init_module, skipping modules that are built in
// or already loaded.
package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// maxModuleSize bounds a decompressed module (the largest stock modules are
// a few MiB).
const maxModuleSize = 64 << 20

// Normalize returns the canonical module name: file name without directory
// and extensions, '-' as '_'.
func Normalize(name string) string {
	name = filepath.Base(name)
	if i := strings.Index(name, ".ko"); i >= 0 {
		name = name[:i]
	}
	return strings.ReplaceAll(name, "-", "_")
}

// Index is a parsed modules.dep (and modules.builtin) of one kernel.
type Index struct {
	Dir     string              // /lib/modules/VERSION
	paths   map[string]string   // module name -> path relative to Dir
	deps    map[string][]string // module name -> names of its direct and indirect dependencies, as listed
	builtin map[string]bool
	// Params, if set, gives the parameters to load a module with (as
	// modprobe takes them from the kernel command line).
	Params func(module string) string
}

// Open reads DIR/modules.dep and, if present, DIR/modules.builtin.
func Open(dir string) (*Index, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kmod: %w (run depmod for this kernel)", err)
	}
	defer f.Close()
	idx, err := ParseDep(f)
	if err != nil {
		return nil, err
	}
	idx.Dir = dir
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, line := range strings.Fields(string(b)) {
			idx.builtin[Normalize(line)] = true
		}
	}
	return idx, nil
}

// ParseDep parses the modules.dep format: one line per module,
// "path/mod.ko: path/dep1.ko path/dep2.ko".
func ParseDep(r io.Reader) (*Index, error) {
	idx := &Index{paths: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok || mod == "" {
			return nil, fmt.Errorf("kmod: modules.dep line %d: missing ':'", n)
		}
		name := Normalize(mod)
		idx.paths[name] = mod
		var deps []string
		for _, d := range strings.Fields(rest) {
			deps = append(deps, Normalize(d))
		}
		idx.deps[name] = deps
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kmod: reading modules.dep: %w", err)
	}
	return idx, nil
}

// ErrNotFound is returned for a module that is neither in modules.dep nor
// built in.
var ErrNotFound = errors.New("module not found")

// Resolve returns the modules to load for the given names, each
// dependency before its users, without duplicates. Built-in modules are left
// out.
func (idx *Index) Resolve(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("kmod: dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		if idx.builtin[name] {
			state[name] = 2
			return nil
		}
		if _, ok := idx.paths[name]; !ok {
			return fmt.Errorf("kmod: %s: %w", name, ErrNotFound)
		}
		state[name] = 1
		// modules.dep lists dependencies so that the last must load first.
		deps := idx.deps[name]
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	for _, n := range names {
		if err := visit(Normalize(n), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Path returns the absolute path of a module's file.
func (idx *Index) Path(name string) string { return filepath.Join(idx.Dir, idx.paths[name]) }

// ReadModule reads a module file, decompressing it by its extension.
func ReadModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(path, ".ko"):
	case strings.HasSuffix(path, ".ko.xz"):
		xr, err := xz.NewReader(bufio.NewReader(f))
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", path, err)
		}
		r = xr
	case strings.HasSuffix(path, ".ko.zst"):
		zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxModuleSize))
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(path, ".ko.gz"):
		gr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", path, err)
		}
		r = gr
	default:
		return nil, fmt.Errorf("kmod: %s: unknown module file extension", path)
	}
	data, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("kmod: decompressing %s: %w", path, err)
	}
	if len(data) > maxModuleSize {
		return nil, fmt.Errorf("kmod: %s: larger than %d bytes", path, maxModuleSize)
	}
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return nil, fmt.Errorf("kmod: %s: not an ELF module", path)
	}
	return data, nil
}

// Loaded returns the names of modules currently loaded (from /proc/modules).
func Loaded() map[string]bool {
	loaded := map[string]bool{}
	b, err := os.ReadFile("/proc/modules")
	if err != nil {
		return loaded
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, _, ok := strings.Cut(line, " "); ok {
			loaded[name] = true
		}
	}
	return loaded
}

// Load resolves names and loads every module not yet loaded. It returns the
// names it loaded.
func (idx *Index) Load(names ...string) ([]string, error) {
	order, err := idx.Resolve(names...)
	if err != nil {
		return nil, err
	}
	loaded := Loaded()
	var done []string
	for _, name := range order {
		if loaded[name] {
			continue
		}
		data, err := ReadModule(idx.Path(name))
		if err != nil {
			return done, err
		}
		var params string
		if idx.Params != nil {
			params = idx.Params(name)
		}
		if err := unix.InitModule(data, params); err != nil && !errors.Is(err, unix.EEXIST) {
			return done, fmt.Errorf("kmod: loading %s: %w", name, err)
		}
		done = append(done, name)
	}
	return done, nil
}
