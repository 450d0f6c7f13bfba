package tests

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// fetchApp is an executable program: GET /?url=U fetches U and answers
// with what it got (502 with the error when the fetch fails); any other
// GET says hello. It serves on PORT and, as a port no manifest allows, on
// 9090.
const fetchApp = `#!/usr/bin/python3
import os, socket, threading, urllib.request
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlparse, parse_qs

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        code, body = 200, b"hello from the VM\n"
        if "url" in q:
            try:
                body = urllib.request.urlopen(q["url"][0], timeout=5).read()
            except Exception as e:
                code, body = 502, ("fetch failed: %s\n" % e).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

` + dualStackServer + `
threading.Thread(target=Server(("::", 9090), H).serve_forever, daemon=True).start()
Server(("::", int(os.environ["PORT"])), H).serve_forever()
`

// dualStackServer is the Python class of the test programs' HTTP servers:
// one socket for IPv6 and IPv4 (an executable's, with socket and
// ThreadingHTTPServer imported).
const dualStackServer = `
class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
`

// The test's outside: the names the DNS server in the upstream namespace
// gives, and the port of its HTTP server.
const (
	name4, name6 = "v4.ferry.test", "v6.ferry.test"
	outsidePort  = "8000"
	ipv6Prefix   = "2001:db8:1::/64"
)

// serveOutside runs, in the upstream namespace, an HTTP server that
// answers with the client's address (IPv4 and IPv6) and a DNS server on
// the router's IPv4 address that gives name4 its IPv4 and name6 its IPv6
// address.
func serveOutside(t *testing.T, up *upstream) {
	t.Helper()
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprint(w, host)
	})}
	for _, addr := range []string{net.JoinHostPort(up.Router4, outsidePort), net.JoinHostPort(up.Router6, outsidePort)} {
		go web.Serve(up.listen(t, "tcp", addr))
	}
	t.Cleanup(func() { web.Close() })

	var pc net.PacketConn
	var err error
	up.do(t, func() { pc, err = net.ListenPacket("udp", net.JoinHostPort(up.Router4, "53")) })
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]string{
		dns.Fqdn(name4) + "/A":    name4 + ". 60 IN A " + up.Router4,
		dns.Fqdn(name6) + "/AAAA": name6 + ". 60 IN AAAA " + up.Router6,
	}
	resolver := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, question := range q.Question {
			if rr, ok := records[question.Name+"/"+dns.TypeToString[question.Qtype]]; ok {
				if r, err := dns.NewRR(rr); err == nil {
					m.Answer = append(m.Answer, r)
				}
			}
		}
		w.WriteMsg(m)
	})}
	go resolver.ActivateAndServe()
	t.Cleanup(func() { resolver.Shutdown() })
}

// programAddresses returns a running program's IPv4 and IPv6 addresses
// (without prefix lengths), from program status.
func programAddresses(t *testing.T, admin, id string) (netip.Addr, netip.Addr) {
	t.Helper()
	bin, _ := buildAgent()
	out, err := exec.Command(bin, "program", "--admin", admin, "status", id, "--json").Output()
	var st struct{ IPv4, IPv6 string }
	if err != nil || json.Unmarshal(out, &st) != nil || st.IPv4 == "" || st.IPv6 == "" {
		t.Fatalf("status of %s: %v %s", id, err, out)
	}
	return netip.MustParsePrefix(st.IPv4).Addr(), netip.MustParsePrefix(st.IPv6).Addr()
}

// httpGet sends GET / on conn and returns the answer's body.
func httpGet(t *testing.T, conn net.Conn) string {
	t.Helper()
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: vm\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the VM's answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// egressConfig has a program with internet, an allowed port and a port
// forward, and one without internet that allows the same port.
func egressConfig(code string) string {
	return fmt.Sprintf(`{"idle_timeout": "10m", "programs": {
		"open": {"code": {"encoding": "plain", "entrypoint": "server.py", "interface": "executable", "path": %[1]q},
		         "environment": {"internet": true, "allowed_ports": [8080], "port_forwards": [{"host_port": 18080, "port": 8080}]},
		         "on": {"http": true}},
		"closed": {"code": {"encoding": "plain", "entrypoint": "server.py", "interface": "executable", "path": %[1]q},
		         "environment": {"allowed_ports": [8080]}, "on": {"http": true}}}}`, code)
}

// Must-show 1, 2 and 4 on the sandbox backend: a VM with internet reaches
// a server in an upstream namespace by name over IPv4 (NATed to the
// uplink's address) and IPv6 (its own routed address, found by the router
// through the NDP proxy); a VM without internet reaches nothing. From
// upstream, the VM's allowed port on its IPv6 address answers, another
// port is dropped, and a port forward on the uplink's IPv4 address
// reaches the VM. After the agent is SIGKILLed, its restart leaves no
// rule, route or neighbour proxy entry of the dead VMs.
func TestEgressSandbox(t *testing.T) {
	requireRoot(t)
	requireTool(t, "curl")
	requirePythonModules(t, "http.server", "urllib.request")
	code := writeApp(t, map[string]string{"server.py": fetchApp})
	if err := chmodX(filepath.Join(code, "server.py")); err != nil {
		t.Fatal(err)
	}
	ns := newTestNetns(t)
	up := newUpstream(t, ns, ipv6Prefix)
	serveOutside(t, up)
	state := filepath.Join(t.TempDir(), "state")
	args := []string{"--state-dir", state, "--ipv6-prefix", ipv6Prefix, "--dns", up.Router4} // the uplink: the default route's
	agent := serveAgent(t, egressConfig(code), agentOptions{ns: ns}, args...)
	fetch := func(program, url string) string {
		return ns.curl(t, "http://"+agent.addr+"/vm/"+program+"/?url="+url)
	}

	// (1) Egress by name: NAT over IPv4, the VM's own address over IPv6.
	if got := fetch("open", "http://"+name4+":"+outsidePort+"/"); got != up.Uplink4 {
		t.Errorf("over IPv4 the server saw %q, want the uplink's %s (NAT)", got, up.Uplink4)
	}
	_, open6 := programAddresses(t, agent.admin, "open")
	if !netip.MustParsePrefix(ipv6Prefix).Contains(open6) {
		t.Fatalf("the VM's IPv6 address %s is not in --ipv6-prefix %s", open6, ipv6Prefix)
	}
	if got := fetch("open", "http://"+name6+":"+outsidePort+"/"); got != open6.String() {
		t.Errorf("over IPv6 the server saw %q, want the VM's %s", got, open6)
	}
	t.Logf("the server saw %s over IPv4 and %s over IPv6", up.Uplink4, open6)
	for _, url := range []string{"http://" + up.Router4 + ":" + outsidePort + "/", "http://[" + up.Router6 + "]:" + outsidePort + "/"} {
		if got := fetch("closed", url); !strings.HasPrefix(got, "fetch failed") {
			t.Errorf("a VM without internet fetched %s: %q", url, got)
		}
	}

	// (2) Inbound from upstream: the allowed port, not another; the
	// port forward.
	conn, err := up.dial(t, "tcp", net.JoinHostPort(open6.String(), "8080"), 30*time.Second)
	if err != nil {
		t.Fatalf("upstream to the VM's allowed port: %v", err)
	}
	if got := httpGet(t, conn); got != "hello from the VM\n" {
		t.Errorf("allowed port answered %q", got)
	}
	_, err = up.dial(t, "tcp", net.JoinHostPort(open6.String(), "9090"), 3*time.Second)
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Errorf("upstream to a port not allowed: %v, want it dropped (a timeout)", err)
	}
	conn, err = up.dial(t, "tcp", net.JoinHostPort(up.Uplink4, "18080"), 30*time.Second)
	if err != nil {
		t.Fatalf("upstream to the port forward: %v", err)
	}
	if got := httpGet(t, conn); got != "hello from the VM\n" {
		t.Errorf("the port forward answered %q", got)
	}

	// (4) SIGKILL: the dead VMs' proxy entries and firewall elements
	// stay until the next agent starts, which removes them.
	nl := ns.netlink(t)
	if n := len(vmState(t, ns, nl)); n == 0 {
		t.Fatal("no neighbour proxy entry or firewall element while the VMs run: nothing to check")
	}
	syscall.Kill(-agent.cmd.Process.Pid, syscall.SIGKILL)
	<-agent.exited
	t.Logf("left by the killed agent: %v", vmState(t, ns, nl))
	serveAgent(t, egressConfig(code), agentOptions{ns: ns}, args...)
	if left := vmState(t, ns, nl); len(left) > 0 {
		t.Errorf("after the restart, left from the dead VMs: %v", left)
	}
}

// vmState lists what the agent's VMs have in the namespace: neighbour
// proxy entries on the uplink, routes into the prefix, and elements of
// the firewall table's sets.
func vmState(t *testing.T, ns *testNetns, nl *netlink.Handle) []string {
	t.Helper()
	var found []string
	wan, err := nl.LinkByName("wan0")
	if err != nil {
		t.Fatal(err)
	}
	proxies, err := nl.NeighProxyList(wan.Attrs().Index, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range proxies {
		found = append(found, "proxy "+p.IP.String())
	}
	prefix := netip.MustParsePrefix(ipv6Prefix)
	routes, err := nl.RouteList(nil, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok && prefix.Contains(a) {
			found = append(found, "route "+r.Dst.String())
		}
	}
	h, err := netns.GetFromPath(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range tables {
		sets, err := conn.GetSets(table)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sets {
			elems, err := conn.GetSetElements(s)
			if err != nil {
				t.Fatal(err)
			}
			if len(elems) > 0 {
				found = append(found, fmt.Sprintf("%d elements in %s %s", len(elems), table.Name, s.Name))
			}
		}
	}
	return found
}
