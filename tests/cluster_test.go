package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
)

// clusterLease is the lease of the test clusters: short, so failovers are
// quick, and still ten heartbeats long.
const clusterLease = 2 * time.Second

// clusterApp answers with what a persistent program knows of itself: its
// node and its fencing token (from its environment), and which node
// forwarded the request, if one did.
const clusterApp = `
import json, os
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    forwarded = dict(scope["headers"]).get(b"x-ferry-forwarded-by", b"").decode()
    body = json.dumps({"node": os.environ.get("FERRY_NODE", ""), "token": os.environ.get("FERRY_FENCING_TOKEN", ""), "forwarded_by": forwarded}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
`

// clusterNode is one agent of a test cluster.
type clusterNode struct {
	name, state, clusterAddr string
	capacity                 []string
	proc                     *agentProc
	client                   *admin.Client
}

// testCluster is several agents on loopback, each a node of one cluster,
// all with the sandbox backend.
type testCluster struct {
	t      *testing.T
	config string
	nodes  []*clusterNode
}

// newTestCluster starts n agents (the first bootstraps, the others join it)
// with the configuration document config, and waits until all are voters.
func newTestCluster(t *testing.T, n int, config string, capacity ...string) *testCluster {
	t.Helper()
	requireRoot(t)
	requirePythonModules(t, "json")
	c := &testCluster{t: t, config: config}
	for i := range n {
		node := &clusterNode{name: fmt.Sprintf("node%d", i+1), state: t.TempDir(), clusterAddr: freePort(t), capacity: capacity}
		c.nodes = append(c.nodes, node)
		c.start(node)
	}
	c.waitVoters(n)
	return c
}

// start starts (or restarts, with its state) a node.
func (c *testCluster) start(node *clusterNode) {
	c.t.Helper()
	args := []string{"--node-name", node.name, "--state-dir", node.state, "--cluster-listen", node.clusterAddr, "--lease", clusterLease.String()}
	if node != c.nodes[0] {
		args = append(args, "--cluster-join", c.nodes[0].clusterAddr)
	}
	args = append(args, node.capacity...)
	node.proc = serveAgent(c.t, c.config, agentOptions{}, args...)
	node.client = admin.NewClient(node.proc.admin, "")
}

// status is a node's view of the cluster.
func (c *testCluster) status(node *clusterNode) (*admin.ClusterStatus, error) {
	var st admin.ClusterStatus
	err := node.client.Do("GET", "/v1/cluster", nil, &st)
	return &st, err
}

// waitVoters waits until the first node reports n voters and a leader.
func (c *testCluster) waitVoters(n int) {
	c.t.Helper()
	waitFor(c.t, time.Minute, func() bool {
		st, err := c.status(c.nodes[0])
		if err != nil || len(st.Nodes) != n || st.Leader == "" {
			return false
		}
		for _, nd := range st.Nodes {
			if nd.Role != "voter" {
				return false
			}
		}
		return true
	}, fmt.Sprintf("%d voters", n))
}

// running returns the nodes (of those given) whose agent runs the program
// in a VM now, as their admin APIs say.
func running(nodes []*clusterNode, id string) []string {
	var out []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st admin.Status
			if n.client.Do("GET", "/v1/programs/"+id, nil, &st) == nil && st.Running {
				mu.Lock()
				out = append(out, n.name)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Strings(out)
	return out
}

// get fetches a program's answer from a node's HTTP listener.
func (n *clusterNode) get(id string) (int, string, error) {
	resp, body, err := n.request(id, nil)
	if err != nil {
		return 0, "", err
	}
	return resp.StatusCode, body, nil
}

// request sends GET /vm/{id}/ with header to a node's HTTP listener and
// returns the response and its body.
func (n *clusterNode) request(id string, header http.Header) (*http.Response, string, error) {
	req, err := http.NewRequest("GET", "http://"+n.proc.addr+"/vm/"+id+"/", nil)
	if err != nil {
		return nil, "", err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp, b.String(), nil
}

// deployFile writes a manifest and deploys it through a node's admin API.
func (n *clusterNode) deploy(t *testing.T, id, manifest string) error {
	t.Helper()
	return n.client.Do("PUT", "/v1/programs/"+id, strings.NewReader(manifest), nil)
}

// Three agents form a cluster of three voters; a program deployed on node
// 2 is served by nodes 1 and 3 within 2 s; an agent restarted with its
// state directory has the program back without it in its configuration.
func TestClusterThreeNodesShareDeploys(t *testing.T) {
	c := newTestCluster(t, 3, `{"programs": {}}`)
	out, err := exec.Command(mustAgent(t), "cluster", "--admin", c.nodes[0].proc.admin, "status").CombinedOutput()
	if err != nil || strings.Count(string(out), "voter") != 3 {
		t.Fatalf("cluster status: %v\n%s", err, out)
	}
	t.Logf("cluster status:\n%s", out)
	code := writeApp(t, map[string]string{"main.py": clusterApp})
	deployed := time.Now()
	if err := c.nodes[1].deploy(t, "shared", fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, "on": {"http": true}}`, code)); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*clusterNode{c.nodes[0], c.nodes[2]} {
		waitFor(t, 2*time.Second, func() bool {
			var st admin.Status
			return n.client.Do("GET", "/v1/programs/shared", nil, &st) == nil
		}, n.name+" does not know the program deployed on node2 within 2 s")
		t.Logf("%s knows the program %s after the deploy", n.name, time.Since(deployed).Round(time.Millisecond))
		if status, body, err := n.get("shared"); err != nil || status != http.StatusOK {
			t.Fatalf("%s: %d %s %v", n.name, status, body, err)
		}
		t.Logf("%s served it %s after the deploy", n.name, time.Since(deployed).Round(time.Millisecond))
	}
	// A persistent program no node could hold is refused at deploy.
	err = c.nodes[0].deploy(t, "huge", fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q},
		"resources": {"vcpus": 1, "memory": 9999999}, "on": {"persistent": true}}`, code))
	if err == nil || !strings.Contains(err.Error(), "no node of the cluster has") {
		t.Errorf("an unplaceable persistent program: %v", err)
	}
	// Node 1 restarts with its state and a configuration without programs.
	c.nodes[0].proc.stop()
	c.start(c.nodes[0])
	if status, body, err := c.nodes[0].get("shared"); err != nil || status != http.StatusOK {
		t.Fatalf("after a restart: %d %s %v", status, body, err)
	}
	// A fourth and a fifth node join; one leaves and is removed.
	for _, name := range []string{"node4", "node5"} {
		node := &clusterNode{name: name, state: t.TempDir(), clusterAddr: freePort(t)}
		c.nodes = append(c.nodes, node)
		c.start(node)
	}
	waitFor(t, time.Minute, func() bool {
		st, err := c.status(c.nodes[0])
		return err == nil && len(st.Nodes) == 5
	}, "five nodes")
	st, _ := c.status(c.nodes[0])
	roles := map[string]int{}
	for _, n := range st.Nodes {
		roles[n.Role]++
	}
	t.Logf("five nodes: %v", roles)
	if roles["voter"] != 3 {
		t.Errorf("roles with five nodes: %v, want three voters", roles)
	}
	if status, _, err := c.nodes[4].get("shared"); err != nil || status != http.StatusOK {
		t.Errorf("the fifth node does not serve the shared program: %d %v", status, err)
	}
	c.nodes[4].proc.stop()
	out, err = exec.Command(mustAgent(t), "cluster", "--admin", c.nodes[0].proc.admin, "remove", "node5").CombinedOutput()
	if err != nil {
		t.Fatalf("cluster remove: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, func() bool {
		st, err := c.status(c.nodes[0])
		return err == nil && len(st.Nodes) == 4
	}, "four nodes after the removal")
}

// mustAgent returns host-agent's path.
func mustAgent(t *testing.T) string {
	t.Helper()
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// A persistent program runs on exactly one node, sampled every 100 ms for
// 30 s; when the agent that runs it is killed (its VMs with it), another
// node runs it within a lease plus a boot, never two at once, with a
// higher token.
func TestClusterPersistentProgramRunsExactlyOnce(t *testing.T) {
	code := writeApp(t, map[string]string{"main.py": clusterApp})
	c := newTestCluster(t, 3, fmt.Sprintf(`{"programs": {"solo": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q},
		"resources": {"vcpus": 1, "memory": 128}, "on": {"http": true, "persistent": true}}}}`, code))
	var first []string
	waitFor(t, time.Minute, func() bool { first = running(c.nodes, "solo"); return len(first) == 1 }, "the persistent program did not start")
	owner := c.nodes[0]
	for _, n := range c.nodes {
		if n.name == first[0] {
			owner = n
		}
	}
	var before admin.Status
	owner.client.Do("GET", "/v1/programs/solo", nil, &before)
	t.Logf("runs on %s with token %d", owner.name, before.Token)

	var survivors []*clusterNode
	for _, n := range c.nodes {
		if n != owner {
			survivors = append(survivors, n)
		}
	}
	// The other nodes forward its requests to the owner.
	for _, n := range survivors {
		want := fmt.Sprintf(`{"node": %q, "token": "%d", "forwarded_by": %q}`, owner.name, before.Token, n.name)
		// Until the owner has advertised its address, 503.
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			status, b, err := n.get("solo")
			if err == nil && status == http.StatusOK && b == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s forwarding to %s: %d %s %v, want 200 %s", n.name, owner.name, status, b, err, want)
			}
		}
		// One hop only: a request that says it was forwarded already
		// (a client's word only keeps its own request here) is the 503
		// naming the owner.
		resp, b, err := n.request("solo", http.Header{"X-Ferry-Forwarded-By": {"elsewhere"}})
		if err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Ferry-Node") != owner.name {
			t.Errorf("%s, a request forwarded already: %v %v %s, want 503 naming %s", n.name, resp, err, b, owner.name)
		}
	}
	sampleEnd := time.Now().Add(30 * time.Second)
	killAt := time.Now().Add(5 * time.Second)
	var killed, movedAt time.Time
	var twice []string
	samples := 0
	for time.Now().Before(sampleEnd) {
		nodes := c.nodes
		if !killed.IsZero() {
			nodes = survivors
		}
		on := running(nodes, "solo")
		samples++
		if len(on) > 1 {
			twice = append(twice, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), on))
		}
		if !killed.IsZero() && movedAt.IsZero() && len(on) == 1 {
			movedAt = time.Now()
		}
		if killed.IsZero() && time.Now().After(killAt) {
			// The owner and its VMs (they die with their agent).
			syscall.Kill(owner.proc.cmd.Process.Pid, syscall.SIGKILL)
			killed = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(twice) > 0 {
		t.Fatalf("the program ran on two nodes at once, %d of %d samples: %v", len(twice), samples, twice)
	}
	if movedAt.IsZero() {
		t.Fatalf("no other node ran the program within 25 s of the owner's death")
	}
	t.Logf("%d samples, never on two nodes; after the owner was killed, another node ran it %s later (lease %s)",
		samples, movedAt.Sub(killed).Round(time.Millisecond), clusterLease)
	on := running(survivors, "solo")
	var after admin.Status
	for _, n := range survivors {
		if len(on) == 1 && n.name == on[0] {
			n.client.Do("GET", "/v1/programs/solo", nil, &after)
			if status, body, err := n.get("solo"); err != nil || status != 200 || !strings.Contains(body, fmt.Sprintf(`"token": "%d"`, after.Token)) {
				t.Errorf("the new copy answered %d %s %v, want its token %d", status, body, err, after.Token)
			}
		}
	}
	if after.Token <= before.Token {
		t.Errorf("token %d after the takeover, %d before: it must go up", after.Token, before.Token)
	}
}

// An owner stopped (SIGSTOP) for longer than the lease loses the program:
// another node takes over; once it runs again (SIGCONT) the old owner stops
// its copy at once, serves nothing past its lease, and a write with the old
// token is refused by the store.
func TestClusterStoppedOwnerIsFencedOff(t *testing.T) {
	code := writeApp(t, map[string]string{"main.py": clusterApp})
	c := newTestCluster(t, 3, fmt.Sprintf(`{"programs": {"fenced": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q},
		"resources": {"vcpus": 1, "memory": 128}, "on": {"http": true, "persistent": true}}}}`, code))
	var on []string
	waitFor(t, time.Minute, func() bool { on = running(c.nodes, "fenced"); return len(on) == 1 }, "the persistent program did not start")
	var owner *clusterNode
	var others []*clusterNode
	for _, n := range c.nodes {
		if n.name == on[0] {
			owner = n
		} else {
			others = append(others, n)
		}
	}
	var st admin.Status
	owner.client.Do("GET", "/v1/programs/fenced", nil, &st)
	oldToken := st.Token
	if err := owner.client.Do("PUT", fmt.Sprintf("/v1/programs/fenced/kv/state?token=%d", oldToken), strings.NewReader("v1"), nil); err != nil {
		t.Fatalf("the owner's write with its token: %v", err)
	}
	var timeline []string
	mark := func(format string, args ...any) {
		timeline = append(timeline, fmt.Sprintf("%s  %s", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...)))
	}
	pid := owner.proc.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGSTOP)
	stopped := time.Now()
	mark("SIGSTOP %s (token %d)", owner.name, oldToken)
	var taker []string
	waitFor(t, time.Minute, func() bool { taker = running(others, "fenced"); return len(taker) == 1 }, "no other node took the program over")
	mark("%s runs it, %s after the stop (lease %s)", taker[0], time.Since(stopped).Round(time.Millisecond), clusterLease)
	if took := time.Since(stopped); took < clusterLease {
		t.Errorf("taken over %s after the owner stopped, before a whole lease", took)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	mark("SIGCONT %s", owner.name)
	// A request sent to the old owner now is not served by its old copy:
	// it is answered 503, or forwarded to the new owner.
	status, body, err := owner.get("fenced")
	mark("request to %s: %d %s", owner.name, status, strings.TrimSpace(body))
	if err == nil && status == http.StatusOK && !strings.HasPrefix(body, fmt.Sprintf(`{"node": %q`, taker[0])) {
		t.Errorf("the old owner served the program after its lease ran out: %s", body)
	}
	waitFor(t, 10*time.Second, func() bool { return len(running([]*clusterNode{owner}, "fenced")) == 0 }, "the old owner kept its copy")
	mark("%s stopped its copy", owner.name)
	err = owner.client.Do("PUT", fmt.Sprintf("/v1/programs/fenced/kv/state?token=%d", oldToken), strings.NewReader("stale"), nil)
	mark("write with the old token %d: %v", oldToken, err)
	if err == nil || !strings.Contains(err.Error(), "stale fencing token") {
		t.Errorf("a write with the old token was not refused: %v", err)
	}
	var value []byte
	value, err = others[0].client.Get("/v1/programs/fenced/kv/state")
	if err != nil || string(value) != "v1" {
		t.Errorf("stored value %q %v, want v1", value, err)
	}
	t.Logf("timeline:\n  %s", strings.Join(timeline, "\n  "))
}

// With two of three nodes gone, a deploy is refused with 503 "no quorum"
// and an on-demand program already known still answers on the survivor.
func TestClusterWithoutQuorum(t *testing.T) {
	code := writeApp(t, map[string]string{"main.py": clusterApp})
	c := newTestCluster(t, 3, fmt.Sprintf(`{"programs": {"ondemand": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q},
		"on": {"http": true}}, "keeper": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q},
		"resources": {"vcpus": 1, "memory": 128}, "on": {"persistent": true}}}}`, code, code))
	waitFor(t, time.Minute, func() bool { return len(running(c.nodes, "keeper")) == 1 }, "the persistent program did not start")
	// The survivor is the node that runs the persistent program.
	survivor := c.nodes[2]
	for _, n := range c.nodes {
		if on := running([]*clusterNode{n}, "keeper"); len(on) == 1 {
			survivor = n
		}
	}
	var others []*clusterNode
	for _, n := range c.nodes {
		if n != survivor {
			others = append(others, n)
		}
	}
	if status, _, err := survivor.get("ondemand"); err != nil || status != 200 {
		t.Fatalf("before: %d %v", status, err)
	}
	for _, n := range others {
		syscall.Kill(n.proc.cmd.Process.Pid, syscall.SIGKILL)
		<-n.proc.exited
	}
	lost := time.Now()
	// Its lease can no longer be renewed: the survivor stops its copy.
	waitFor(t, 30*time.Second, func() bool { return len(running([]*clusterNode{survivor}, "keeper")) == 0 },
		"the persistent program still runs without a quorum")
	t.Logf("the survivor stopped the persistent program %s after losing its quorum (lease %s)", time.Since(lost).Round(time.Millisecond), clusterLease)
	began := time.Now()
	err := survivor.deploy(t, "late", fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, "on": {"http": true}}`, code))
	if err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Fatalf("a deploy without quorum: %v, want a no quorum error", err)
	}
	t.Logf("refused after %s: %v", time.Since(began).Round(time.Millisecond), err)
	// The CLI says it too, with a failure status.
	out, cerr := exec.Command(mustAgent(t), "program", "--admin", survivor.proc.admin, "deploy", "late2", writeManifest(t, code)).CombinedOutput()
	if cerr == nil || !strings.Contains(string(out), "no quorum") {
		t.Errorf("program deploy without quorum: %v\n%s", cerr, out)
	}
	if status, body, err := survivor.get("ondemand"); err != nil || status != 200 {
		t.Fatalf("the known on-demand program on the survivor: %d %s %v", status, body, err)
	}
}

// writeManifest writes an on-demand ASGI manifest for code.
func writeManifest(t *testing.T, code string) string {
	path := filepath.Join(t.TempDir(), "manifest.json")
	os.WriteFile(path, []byte(fmt.Sprintf(`{"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q}, "on": {"http": true}}`, code)), 0o644)
	return path
}

// Twenty persistent programs over three nodes: each node carries no more
// than its declared capacity; after one node is killed, all twenty run
// exactly once again within the failover bound. The time to reallocate
// them all is measured.
func TestClusterTwentyProgramsFailOver(t *testing.T) {
	code := writeApp(t, map[string]string{"main.py": clusterApp})
	var progs []string
	for i := range 20 {
		progs = append(progs, fmt.Sprintf(`"p%02d": {"code": {"entrypoint": "main:app", "interface": "asgi", "path": %q},
			"resources": {"vcpus": 1, "memory": 96, "workers": 1}, "on": {"http": true, "persistent": true}}`, i, code))
	}
	// 12 programs of 96 MiB fit a node of 1152 MiB: 20 need two nodes.
	c := newTestCluster(t, 3, `{"programs": {`+strings.Join(progs, ",")+`}}`, "--capacity-vcpus", "12", "--capacity-memory", "1152")
	placed := func(nodes []*clusterNode) (map[string][]string, bool) {
		where := map[string][]string{}
		for _, n := range nodes {
			var list []admin.Status
			if n.client.Do("GET", "/v1/programs", nil, &list) != nil {
				return nil, false
			}
			for _, s := range list {
				if s.Running {
					where[s.ID] = append(where[s.ID], n.name)
				}
			}
		}
		return where, true
	}
	allOnce := func(nodes []*clusterNode) (map[string][]string, bool) {
		where, ok := placed(nodes)
		if !ok || len(where) != 20 {
			return where, false
		}
		for _, on := range where {
			if len(on) != 1 {
				return where, false
			}
		}
		return where, true
	}
	var where map[string][]string
	began := time.Now()
	waitFor(t, 3*time.Minute, func() bool { var ok bool; where, ok = allOnce(c.nodes); return ok }, "twenty programs running once each")
	t.Logf("twenty programs placed and running %s after the cluster formed", time.Since(began).Round(time.Millisecond))
	perNode := map[string]int{}
	for _, on := range where {
		perNode[on[0]]++
	}
	for name, count := range perNode {
		if count > 12 {
			t.Errorf("%s runs %d programs of 96 MiB, over its 1152 MiB", name, count)
		}
	}
	t.Logf("per node: %v", perNode)
	victim := c.nodes[0]
	var survivors []*clusterNode
	for _, n := range c.nodes[1:] {
		survivors = append(survivors, n)
	}
	lost := perNode[victim.name]
	syscall.Kill(victim.proc.cmd.Process.Pid, syscall.SIGKILL)
	killed := time.Now()
	var twice []string
	waitFor(t, 3*time.Minute, func() bool {
		w, ok := placed(survivors)
		for id, on := range w {
			if len(on) > 1 {
				twice = append(twice, id)
			}
		}
		where = w
		_, all := allOnce(survivors)
		return ok && all
	}, "all twenty programs running once on the survivors")
	took := time.Since(killed)
	if len(twice) > 0 {
		t.Errorf("programs seen on two nodes at once: %v", twice)
	}
	t.Logf("node1 (%d programs) killed; all twenty ran once again on the survivors after %s (lease %s)", lost, took.Round(time.Millisecond), clusterLease)
	perNode = map[string]int{}
	for _, on := range where {
		perNode[on[0]]++
	}
	for name, count := range perNode {
		if count > 12 {
			t.Errorf("after the failover %s runs %d programs of 96 MiB, over its capacity", name, count)
		}
	}
	if report := os.Getenv("FERRY_CLUSTER_REPORT"); report != "" {
		line, _ := json.Marshal(map[string]any{"programs_moved": lost, "reallocation_seconds": took.Seconds(), "lease_seconds": clusterLease.Seconds()})
		os.WriteFile(report, line, 0o644)
	}
}
