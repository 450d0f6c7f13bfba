// Package manifest reads the host agent's configuration: the programs it
// serves, each described like the content of an Aleph PROGRAM message
// (code, runtime, volumes, resources, variables, on, authorized_keys).
// Every problem is an error naming the field at fault.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// File is the agent's configuration file.
type File struct {
	// Root, when set, names the program that gets every request, at /
	// (root_path empty) on any host: the one program of host-agent run
	// (see OneProgram). A configuration file cannot set it.
	Root string `json:"-"`

	Listen      string   `json:"listen,omitempty"`       // HTTP, default 127.0.0.1:8080
	IdleTimeout Duration `json:"idle_timeout,omitempty"` // default 60s
	MaxRunning  int      `json:"max_running,omitempty"`  // 0: no cap
	// Limits bound how the agent serves HTTP; zero fields take the
	// defaults (see host/front).
	Limits   Limits              `json:"limits,omitempty"`
	Programs map[string]*Program `json:"programs"`
}

// MaxConcurrentLimit is the largest per-program concurrency a
// configuration may ask for: the streams one session to init carries at
// once (contract.MaxStreams). Beyond it requests would wait for a stream
// with no bound, which is what the limit is there to prevent.
const MaxConcurrentLimit = contract.MaxStreams

// Limits bound the agent's HTTP serving, after nginx's directives of the
// same purpose. Zero fields take the agent's defaults.
type Limits struct {
	// MaxConcurrent is how many requests (websockets included) one
	// program serves at once; QueueTimeout how long a request past it
	// waits for a slot before a 503 with Retry-After. A program's
	// manifest may set its own.
	MaxConcurrent int      `json:"max_concurrent,omitempty"`
	QueueTimeout  Duration `json:"queue_timeout,omitempty"`
	// HeaderTimeout bounds reading a request head (client_header_timeout),
	// BodyTimeout each wait for request body bytes (client_body_timeout),
	// SendTimeout each wait for the client to take response bytes
	// (send_timeout), KeepaliveTimeout an idle keep-alive connection
	// (keepalive_timeout). They apply to the public, admin and metrics
	// listeners alike.
	HeaderTimeout    Duration `json:"header_timeout,omitempty"`
	BodyTimeout      Duration `json:"body_timeout,omitempty"`
	SendTimeout      Duration `json:"send_timeout,omitempty"`
	KeepaliveTimeout Duration `json:"keepalive_timeout,omitempty"`
	// LogRate is how many lines of a program's output per second reach
	// the agent's log and the program's log ring; the rest are dropped
	// and counted.
	LogRate float64 `json:"log_rate,omitempty"`
}

// ProgramLimits are the limits a program's manifest may set for itself.
type ProgramLimits struct {
	MaxConcurrent int      `json:"max_concurrent,omitempty"`
	QueueTimeout  Duration `json:"queue_timeout,omitempty"`
}

// Program is one program's manifest, or an instance's (Kind).
type Program struct {
	// Kind is KindProgram (the default when empty) or KindInstance.
	Kind string `json:"kind,omitempty"`
	// Code is the program's; an instance has none.
	Code           Code              `json:"code,omitzero"`
	Runtime        *Runtime          `json:"runtime,omitempty"`
	Volumes        []Volume          `json:"volumes,omitempty"`
	Resources      Resources         `json:"resources,omitempty"`
	Variables      map[string]string `json:"variables,omitempty"`
	Environment    Environment       `json:"environment,omitempty"`
	On             On                `json:"on"`
	AuthorizedKeys []string          `json:"authorized_keys,omitempty"`
	// Rootfs is an instance's root filesystem (instance.go).
	Rootfs *Rootfs `json:"rootfs,omitempty"`
	// Limits override the configuration's per-program limits.
	Limits *ProgramLimits `json:"limits,omitempty"`
	// Data is unpacked at /data in the VM (refs.go).
	Data *Data `json:"data,omitempty"`
	// The rest of an Aleph PROGRAM message's content, accepted and
	// ignored (refs.go).
	AlephFields
}

// Code says where the program is and how it runs.
type Code struct {
	// Encoding is how the code is stored: EncodingPlain (a directory or
	// one file; EncodingDirectory or empty say the same for a path),
	// EncodingZip or EncodingSquashfs.
	Encoding   string `json:"encoding"`
	Entrypoint string `json:"entrypoint"` // main:app, or an executable
	// Interface is asgi (the default, as in an Aleph PROGRAM message) or
	// executable; binary, the reference's name, is executable.
	Interface string `json:"interface"`
	// Path is the code on this host (relative paths are relative to the
	// configuration file): a directory, or a single file; or a zip or
	// squashfs file with those encodings. Path or Ref, not both.
	Path string `json:"path,omitempty"`
	// Ref names the code in the content-addressed store (refs.go).
	StoreRef
}

// Code encodings this agent accepts. An Aleph PROGRAM message's
// code.encoding says how the code object is stored: "plain" as it is,
// "zip" or "squashfs" packed. Here the code is a path on this host, so
// "plain" is unpacked code, a directory or one file (a Python module for
// asgi, the program for an executable), and packed encodings are refused.
// The VM gets it in its code directory either way: a directory's content,
// or the one file named after its entrypoint (contract.FileName: main.py
// for main:app). (In init's configuration, the contract, "plain" is
// narrower: one file to copy, contract.EncodingPlainFile; the backends
// hand over a directory or a squashfs image instead.)
const (
	EncodingPlain     = "plain"
	EncodingDirectory = "directory" // a synonym of plain, for a directory
)

// Runtime names the root filesystem and kernel (used by the qemu backend)
// and the Python interpreter inside the VM (asgi programs; init's default,
// /usr/bin/python3, when empty).
type Runtime struct {
	// Ref names a root filesystem image (squashfs) in the store, used as
	// Rootfs (qemu backend).
	StoreRef
	Rootfs string `json:"rootfs,omitempty"`
	Kernel string `json:"kernel,omitempty"`
	Python string `json:"python,omitempty"`
}

// Volume is an immutable, persistent or ephemeral volume (refs.go says
// which fields make which).
type Volume struct {
	Mount     string `json:"mount"`
	Immutable string `json:"immutable,omitempty"` // path of an image on this host
	// Ref names an immutable volume's image in the store.
	StoreRef
	Persistent bool `json:"persistent,omitempty"`
	// Persistence "host" (the reference's way to say persistent) keeps
	// the volume on this node.
	Persistence string `json:"persistence,omitempty"`
	// Ephemeral volumes are fresh and empty at each boot, removed after.
	Ephemeral bool   `json:"ephemeral,omitempty"`
	Name      string `json:"name,omitempty"`
	SizeMiB   int    `json:"size_mib,omitempty"`
	// EstimatedSizeMiB is the reference's hint for immutable volumes,
	// accepted and ignored.
	EstimatedSizeMiB int `json:"estimated_size_mib,omitempty"`
}

// Resources bound the program.
type Resources struct {
	VCPUs  int `json:"vcpus,omitempty"`
	Memory int `json:"memory,omitempty"` // MiB
	// Seconds is the time limit of each request (fractions allowed); 0:
	// none.
	Seconds float64 `json:"seconds,omitempty"`
	// Workers is how many ASGI worker processes init starts: absent, as
	// many as VCPUs; 0, or absent without VCPUs, one per CPU of the VM.
	Workers *int `json:"workers,omitempty"`
}

// Timeout returns the time limit of each request; 0: none.
func (r Resources) Timeout() time.Duration { return time.Duration(r.Seconds * float64(time.Second)) }

// WorkerCount returns the number of ASGI workers to ask init for; 0: one
// per CPU of the VM.
func (r Resources) WorkerCount() int {
	if r.Workers != nil {
		return *r.Workers
	}
	return r.VCPUs
}

// On says how the program is triggered: HTTP requests, a persistent VM,
// and the events of its Triggers (on.schedule, on.message).
type On struct {
	HTTP       bool `json:"http"`
	Persistent bool `json:"persistent,omitempty"`
	Triggers
}

// Duration is a time.Duration written as "60s" in JSON.
type Duration struct{ time.Duration }

// UnmarshalJSON implements json.Unmarshaler.
// MarshalJSON writes the duration as UnmarshalJSON reads it ("60s"), so
// that a manifest survives a round trip (the cluster stores manifests as
// JSON).
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.Duration.String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration like \"60s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration like \"60s\"", s)
	}
	d.Duration = v
	return nil
}

// FieldError is a problem at one field.
type FieldError struct{ Field, Message string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Load reads and validates a configuration file; relative code paths are
// resolved against its directory.
func Load(path string) (*File, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := Parse(doc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	base := filepath.Dir(path)
	for _, p := range f.Programs {
		for _, path := range p.hostPaths() {
			if !filepath.IsAbs(*path) {
				*path = filepath.Join(base, *path)
			}
		}
	}
	return f, nil
}

// Parse decodes and validates a configuration document. Unknown fields are
// errors.
func Parse(doc []byte) (*File, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	if f.MaxRunning < 0 {
		return nil, &FieldError{"max_running", "must not be negative"}
	}
	if err := checkConcurrency("limits.max_concurrent", f.Limits.MaxConcurrent); err != nil {
		return nil, err
	}
	if f.Limits.LogRate < 0 {
		return nil, &FieldError{"limits.log_rate", "must not be negative"}
	}
	ids := make([]string, 0, len(f.Programs))
	for id := range f.Programs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := ValidateProgram(id, f.Programs[id]); err != nil {
			return nil, err
		}
	}
	if err := uniqueHostPorts(f.Programs, ids); err != nil {
		return nil, err
	}
	return &f, nil
}

// ValidateProgram checks one manifest; errors name the field as
// programs.ID.field.
func ValidateProgram(id string, p *Program) error {
	field := func(name string) string { return "programs." + id + "." + name }
	if !contract.ValidID(id) {
		return &FieldError{"programs." + id, "a program id is 1-63 lower-case letters, digits and '-', not starting or ending with '-'"}
	}
	if p == nil {
		return &FieldError{"programs." + id, "missing manifest"}
	}
	if err := validateKind(field, p); err != nil {
		return err
	}
	if !p.IsInstance() {
		if err := validateCode(field, &p.Code); err != nil {
			return err
		}
	}
	if p.Resources.VCPUs < 0 || p.Resources.Memory < 0 || p.Resources.Seconds < 0 || p.Resources.WorkerCount() < 0 {
		return &FieldError{field("resources"), "values must not be negative"}
	}
	if err := validateSources(field, p); err != nil {
		return err
	}
	for i, k := range p.AuthorizedKeys {
		if !contract.ValidAuthorizedKey(k) {
			return &FieldError{fmt.Sprintf("%s[%d]", field("authorized_keys"), i), "not a single OpenSSH public key line (ssh-ed25519 AAAA… comment)"}
		}
	}
	if err := p.Environment.validate(field("environment")); err != nil {
		return err
	}
	if p.Limits != nil {
		if err := checkConcurrency(field("limits.max_concurrent"), p.Limits.MaxConcurrent); err != nil {
			return err
		}
	}
	if err := p.On.Triggers.validate(field("on")); err != nil {
		return err
	}
	if !p.On.HTTP && !p.Persistent() && !p.On.Triggered() {
		return &FieldError{field("on"), "the program is neither reachable over HTTP nor persistent nor triggered by a schedule or messages: it would never run"}
	}
	return nil
}

// checkConcurrency checks a max_concurrent value (0: the default).
func checkConcurrency(field string, n int) error {
	if n < 0 || n > MaxConcurrentLimit {
		return &FieldError{field, fmt.Sprintf("must be between 1 and %d (0 or absent: the default)", MaxConcurrentLimit)}
	}
	return nil
}

// RunProgramID is the id of host-agent run's one program.
const RunProgramID = "main"

// OneProgram returns the configuration of host-agent run: p alone, as
// RunProgramID, getting every request at / (File.Root). It is validated
// as a configuration file's program would be.
func OneProgram(p *Program) (*File, error) {
	if err := ValidateProgram(RunProgramID, p); err != nil {
		return nil, err
	}
	return &File{Root: RunProgramID, Programs: map[string]*Program{RunProgramID: p}}, nil
}

// ErrNoPrograms is returned by callers that need at least one program.
var ErrNoPrograms = errors.New("the configuration lists no programs")
