package daemon

import (
	"net/http"
	"os"
	"time"

	"github.com/ferry-vm/ferry/host/cluster"
	"github.com/ferry-vm/ferry/host/guestapi"
	"github.com/ferry-vm/ferry/host/lifecycle"
)

// sweepPeriod is how often the leader deletes expired keys (they are
// invisible from the moment they expire: this only frees their room).
const sweepPeriod = 30 * time.Second

// guestAPI is the agent's guest API: the service every VM's calls reach,
// and the node name they are told.
type guestAPI struct {
	service *guestapi.Service
	node    string
}

// newGuestAPI makes the guest API over node's store; without a node
// (host-agent run) the kv calls are answered 503.
func newGuestAPI(node *cluster.Node, limits guestapi.Limits, a *agent) *guestAPI {
	g := &guestAPI{}
	opt := guestapi.Options{Limits: limits, Log: a.log}
	if node != nil {
		opt.Store, g.node = node, node.Name()
	} else {
		g.node, _ = os.Hostname()
	}
	g.service = guestapi.New(opt)
	return g
}

// handler serves the calls of inst's program (lifecycle.Options.GuestAPI).
func (g *guestAPI) handler(inst *lifecycle.Instance) http.Handler {
	return g.service.Handler(guestapi.CallerOf(inst, g.node))
}
