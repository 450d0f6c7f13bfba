package tests

import (
	"maps"
	"regexp"
	"slices"
	"sync"
	"testing"
)

// loopFrontTiming are the cases whose outcome depends on timing under
// either front, besides those fidelityKnown marks so, with the reason:
// there the two fronts may differ.
var loopFrontTiming = map[string]string{
	"bad-chunk-size": "whether the app sees the request before net/http finds the bad chunk size depends on when the relay opens the stream",
}

// loopFrontMayDiffer reports why the fronts may differ on an aspect of a
// case, or "".
func loopFrontMayDiffer(name, aspect string) string {
	if why, ok := loopFrontTiming[name]; ok {
		return why
	}
	for _, key := range []string{name + "/" + aspect, name + "/*"} {
		if d, ok := fidelityKnown[key]; ok && d.timing {
			return "timing: " + d.why
		}
	}
	return ""
}

// The event-loop front serves every case of the fidelity harness as the
// net/http front does: the same statuses, headers (Date, Server and the
// agent's own request ids aside), bodies, framing, connection handling
// and the same request as the app saw it, field by field. The cases it
// serves itself and those it hands to net/http alike (percent-escapes,
// chunked bodies, Expect, HTTP/1.0, upgrades, malformed requests).
func TestLoopFrontServesAsNetHTTPDoes(t *testing.T) {
	requireRoot(t)
	requirePythonModules(t, "websockets")
	dir := writeApp(t, map[string]string{"fidelity_app.py": fidelityAppSource(t)})
	fronts := []string{"net/http", "loop"}
	addrs := make([]string, len(fronts))
	for i, f := range fronts {
		addrs[i], _ = runAgent(t, "--front", f, "--workers", "1", dir, "fidelity_app:app")
		fidelityTake(t, addrs[i])
	}
	outcomes := make([][]fidelityOutcome, len(fronts))
	var wg sync.WaitGroup
	for i := range fronts {
		wg.Go(func() {
			for _, c := range fidelityCases {
				o := fidelityExchange(addrs[i], c)
				app, err := fidelityTakeErr(addrs[i])
				if err != nil {
					o.err += " (the app's records: " + err.Error() + ")"
				}
				o.app = app
				outcomes[i] = append(outcomes[i], o)
			}
		})
	}
	wg.Wait()
	compared := 0
	for i, c := range fidelityCases {
		std, loop := loopFrontAspects(outcomes[0][i]), loopFrontAspects(outcomes[1][i])
		keys := map[string]bool{}
		for k := range std {
			keys[k] = true
		}
		for k := range loop {
			keys[k] = true
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			compared++
			key := c.name + "/" + k
			if std[k] == loop[k] {
				continue
			}
			if why := loopFrontMayDiffer(c.name, k); why != "" {
				t.Logf("known difference %s (%s): net/http %q, loop %q", key, why, fidelityShort(std[k]), fidelityShort(loop[k]))
				continue
			}
			t.Errorf("%s: net/http front %q, loop front %q", key, std[k], loop[k])
		}
	}
	t.Logf("%d cases, %d aspects compared", len(fidelityCases), compared)
}

// loopFrontAspects are an outcome's aspects with the agent's own request
// ids in its JSON error bodies left out (random, as in the headers).
func loopFrontAspects(o fidelityOutcome) map[string]string {
	a := o.aspects()
	for k, v := range a {
		a[k] = agentRequestID.ReplaceAllString(v, `"request_id":"(the agent's)"`)
	}
	return a
}

// agentRequestID is a request id the agent made up, in a JSON body.
var agentRequestID = regexp.MustCompile(`"request_id":"[0-9a-f]{16}"`)
