package contract

import "net/netip"

// The guest API (protocol/SPEC.md §5.7): init serves HTTP on a loopback
// address inside the guest and carries each call to the host as a stream
// init opens on its session. These are the names and bounds both sides
// keep.
const (
	// DefaultAPIAddress is where init serves the guest API when the
	// configuration's api_address is empty. 7052 recalls the reference
	// runtime's vsock port 52 and is far from the ports apps usually
	// take (8000, 8080: the executable default).
	DefaultAPIAddress = "127.0.0.1:7052"
	// APIURLEnv is the environment variable that tells the program's
	// processes where the guest API is (http://ADDRESS, no trailing
	// slash); init sets it over any value the configuration gives it.
	APIURLEnv = "FERRY_API_URL"
	// MaxAPIStreams is how many guest-opened streams the host accepts at
	// once on one session (its HELLO's max_streams): beyond it, init's
	// calls wait for a stream to finish.
	MaxAPIStreams = 32
	// MaxAPIBody bounds a guest API request body, on both sides: init
	// answers 413 beyond it and the host resets such a stream with
	// BODY_TOO_LARGE. The API's own limits (a value's size) are below it.
	MaxAPIBody = 2 << 20
)

// validateAPI checks api_address: a loopback IP and a port, not the
// executable's port.
func (c *Config) validateAPI() error {
	if c.API == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(c.API)
	switch {
	case err != nil:
		return fieldErr("api_address", "%q is not IP:PORT (like %s)", c.API, DefaultAPIAddress)
	case !ap.Addr().IsLoopback():
		return fieldErr("api_address", "%s is not a loopback address: the guest API is for the VM's own processes", ap.Addr())
	case ap.Port() == 0:
		return fieldErr("api_address", "port 0 is not a port the program can be told")
	case c.Interface == InterfaceExecutable && int(ap.Port()) == c.ExecutablePort():
		return fieldErr("api_address", "port %d is the program's own PORT", ap.Port())
	}
	return nil
}

// ExecutablePort is the PORT an executable is given: Port, or
// DefaultPort.
func (c *Config) ExecutablePort() int {
	if c.Port == 0 {
		return DefaultPort
	}
	return c.Port
}

// APIURL is the value of APIURLEnv for a guest API served on addr (a
// host:port as net.Listener.Addr gives it).
func APIURL(addr string) string { return "http://" + addr }

// DefaultPort is the PORT an executable is given when the configuration
// names none.
const DefaultPort = 8080
