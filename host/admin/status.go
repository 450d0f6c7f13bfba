package admin

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ferry-vm/ferry/host/statuspage"
)

// statusPage serves GET /status, the status page (host/statuspage): the
// programs and their running VMs from the manager, the nodes from the
// cluster, and what the agent observed from Observed. ?refresh=N reloads
// it every N seconds.
func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	var v statuspage.View
	if s.Observed != nil {
		v = s.Observed()
	}
	v.Generated = time.Now()
	if n, err := strconv.Atoi(r.URL.Query().Get("refresh")); err == nil && n > 0 {
		v.Refresh = n
	}
	for _, id := range s.Programs.IDs() {
		route := s.Programs.Route(id)
		if route == nil {
			continue
		}
		p := route.Program
		prog := statuspage.Program{ID: id, Interface: p.Interface, Entrypoint: p.Entrypoint, HTTP: route.HTTP, Persistent: p.Persistent}
		if inst := s.Manager.Instance(id); inst != nil {
			prog.Running, prog.VM, prog.Started = true, inst.VM.Describe(), inst.Started
			prog.ColdStart, prog.Timeline = inst.ColdStart, inst.Timeline
		}
		if s.Cluster != nil && p.Persistent {
			prog.Node, _ = s.Cluster.Placement(id)
		}
		v.Programs = append(v.Programs, prog)
	}
	if s.Cluster != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		st, err := s.Cluster.Status(ctx)
		cancel()
		if err != nil {
			s.Log.Warn("status page: the cluster's status", "err", err)
		} else {
			v.Node, v.Leader = st.Node, st.Leader
			for _, n := range st.Nodes {
				beat := "-"
				if n.LastHeartbeat >= 0 {
					beat = fmt.Sprintf("%.1fs ago", n.LastHeartbeat)
				}
				v.Nodes = append(v.Nodes, statuspage.Node{Name: n.Name, Address: n.Address, Role: n.Role, Leader: n.Leader,
					VCPUs: n.Capacity.VCPUs, MemoryMiB: n.Capacity.MemoryMiB, LastHeartbeat: beat})
			}
		}
	}
	statuspage.Write(w, &v)
}
