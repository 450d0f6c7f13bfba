// Package alephcompat serves the reference runtime's guest protocol
// (aleph-vm's init1.py, runtimes/aleph-debian-12-python) so that Ferry's
// init can replace init0.sh and init1.py in that runtime's images and an
// unchanged aleph-vm supervisor drives it: the ready signal, the
// configuration (length line and msgpack document, versions 1 and 2),
// run requests (msgpack scope in, msgpack result out, one connection
// each), halt, shell commands (refused unless enabled) and the guest API
// bridge. The formats, and the reference file each is taken from, are in
// docs/aleph-compat.md.
//
// It owns no runner: a configuration is translated into Ferry's
// contract.Config and applied by init's own configure path, and each run
// request becomes a stream served by init's app (the ASGI worker pool or
// the executable), over an in-process Ferry session.
package alephcompat

// Ports and names of the reference runtime.
const (
	// Port is the vsock port init listens on and, on the host (CID 2),
	// the port of the ready signal.
	Port = 52
	// APIPort is the host's vsock port of the guest API.
	APIPort = 53
	// Version is the runtime version init announces in its ready signal:
	// the supervisor sends the version 2 configuration for it (IPv6,
	// authorized keys).
	Version = "2.0.0"
	// APISocket is the unix socket the reference SDK reaches the guest
	// API through (init0.sh's socat; aleph-client reads it from
	// ALEPH_API_UNIX_SOCKET).
	APISocket = "/tmp/socat-socket"
)

// Replies of the halt instruction: the supervisor reads one line, then
// checks that the next is STOPZ.
var (
	haltStopped = []byte("STOP\n")
	haltDone    = []byte("STOPZ\n")
)

// ready is the ready signal's document: msgpack {"version": "2.0.0"}.
type ready struct {
	Version string `msgpack:"version"`
}

// configDoc is the configuration document, versions 1 and 2 (version 1
// lacks ipv6, ipv6_gateway and authorized_keys). Code and input data are
// raw bytes inside the document; with encoding squashfs the code is a
// drive, listed in volumes at /opt/code.
type configDoc struct {
	InputData      []byte            `msgpack:"input_data"`
	Interface      string            `msgpack:"interface"`
	VMHash         string            `msgpack:"vm_hash"`
	Encoding       string            `msgpack:"encoding"`
	Entrypoint     string            `msgpack:"entrypoint"`
	Code           []byte            `msgpack:"code"`
	IP             string            `msgpack:"ip"`
	IPv6           string            `msgpack:"ipv6"`
	Route          string            `msgpack:"route"`
	IPv6Gateway    string            `msgpack:"ipv6_gateway"`
	DNSServers     []string          `msgpack:"dns_servers"`
	Volumes        []volumeDoc       `msgpack:"volumes"`
	Variables      map[string]string `msgpack:"variables"`
	AuthorizedKeys []string          `msgpack:"authorized_keys"`
}

// volumeDoc is one entry of the configuration's volumes.
type volumeDoc struct {
	Mount    string `msgpack:"mount"`
	Device   string `msgpack:"device"`
	ReadOnly bool   `msgpack:"read_only"`
}

// configReply answers the configuration: {"success": true}, or false
// with the error and its traceback.
type configReply struct {
	Success   bool   `msgpack:"success"`
	Error     string `msgpack:"error,omitempty"`
	Traceback string `msgpack:"traceback,omitempty"`
}

// runRequest is a run request: {"scope": {...}}.
type runRequest struct {
	Scope scope `msgpack:"scope"`
}

// scope is the request the supervisor builds (run.py build_asgi_scope):
// type, path, method, query_string (a str there, bytes in ASGI: both
// are taken), headers as [name, value] byte pairs, and the whole body.
type scope struct {
	Type        string     `msgpack:"type"`
	Path        string     `msgpack:"path"`
	RawPath     []byte     `msgpack:"raw_path"`
	RootPath    string     `msgpack:"root_path"`
	Method      string     `msgpack:"method"`
	Scheme      string     `msgpack:"scheme"`
	HTTPVersion string     `msgpack:"http_version"`
	QueryString []byte     `msgpack:"query_string"`
	Headers     [][][]byte `msgpack:"headers"`
	Body        []byte     `msgpack:"body"`
}

// runResult is the answer to a run request: the ASGI response start and
// body messages (the whole body in one), the output and the zipped /data.
type runResult struct {
	Headers    responseStart `msgpack:"headers"`
	Body       responseBody  `msgpack:"body"`
	Output     string        `msgpack:"output"`
	OutputData []byte        `msgpack:"output_data"`
}

// responseStart is ASGI's http.response.start message.
type responseStart struct {
	Type    string     `msgpack:"type"`
	Status  int        `msgpack:"status"`
	Headers [][][]byte `msgpack:"headers"`
}

// responseBody is ASGI's http.response.body message, with the whole body.
type responseBody struct {
	Type     string `msgpack:"type"`
	Body     []byte `msgpack:"body"`
	MoreBody bool   `msgpack:"more_body"`
}

// runError is the answer to a run request that failed: the supervisor
// answers 500 with the traceback as the body.
type runError struct {
	Error     string  `msgpack:"error"`
	Traceback string  `msgpack:"traceback"`
	Output    *string `msgpack:"output"`
}
