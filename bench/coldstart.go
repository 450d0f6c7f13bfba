package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/ferry-vm/ferry/host/admin"
)

// ColdStart is the cold starts of one app under Ferry, next to the time a
// bare `python3 -c 'import MODULE'` takes.
type ColdStart struct {
	App        App
	ID         string
	BareImport time.Duration // median
	// UvicornStart is the median time from starting uvicorn (A) on the app
	// to its first answer: what the same cold start costs without Ferry.
	UvicornStart time.Duration
	Runs         []ColdStartRun    // each measured cold start
	Phases       []admin.BootPhase // median per phase, in timeline order
}

// ColdStartRun is one cold start: from the first request of a stopped
// program to its response (Total), and the agent's boot time and init's
// timeline of it.
type ColdStartRun struct {
	Total  time.Duration
	Boot   time.Duration
	Phases []admin.BootPhase
}

// Median returns the median of f over the runs.
func (c ColdStart) Median(f func(ColdStartRun) time.Duration) time.Duration {
	var v []time.Duration
	for _, r := range c.Runs {
		v = append(v, f(r))
	}
	slices.Sort(v)
	return percentile(v, 50)
}

// measureColdStarts boots each app cfg.ColdStarts times through
// host-agent serve: the program is stopped through the admin API, then one
// request is timed.
func measureColdStarts(ctx context.Context, cfg *Config) ([]ColdStart, error) {
	apps := []struct {
		id  string
		app App
	}{{"plain", plainApp}, {"fastapi", fastapiApp}}
	programs := map[string]any{}
	for _, a := range apps {
		programs[a.id] = map[string]any{
			"code":      map[string]any{"encoding": "plain", "entrypoint": a.app.Module + ":app", "interface": "asgi", "path": cfg.AppsDir},
			"resources": map[string]any{"vcpus": 1},
			"on":        map[string]any{"http": true},
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf, _ := json.Marshal(map[string]any{"listen": "127.0.0.1:" + strconv.Itoa(port), "idle_timeout": "1h", "programs": programs})
	confPath := filepath.Join(cfg.WorkDir, "coldstart.json")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		return nil, err
	}
	sock := filepath.Join(cfg.WorkDir, "admin.sock")
	// The agent's state (its cluster of one) lives in the work directory.
	agent, err := launch(cfg, "coldstart.log", cfg.WorkDir, cfg.HostAgent, "serve", "--config", confPath, "--admin", sock, "--init", cfg.Init,
		"--state-dir", filepath.Join(cfg.WorkDir, "state"))
	if err != nil {
		return nil, err
	}
	srv := &server{base: "http://127.0.0.1:" + strconv.Itoa(port), children: []*child{agent}}
	defer srv.stop()
	if err := waitReady(ctx, srv.base+"/healthz", srv.children, filepath.Join(cfg.WorkDir, "coldstart.log")); err != nil {
		return nil, err
	}
	adminClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	web := &http.Client{Timeout: 60 * time.Second}
	var out []ColdStart
	for _, a := range apps {
		cs := ColdStart{App: a.app, ID: a.id}
		if cs.BareImport, err = bareImport(ctx, cfg, a.app.Module, cfg.ColdStarts); err != nil {
			return nil, err
		}
		if cs.UvicornStart, err = uvicornStart(ctx, cfg, a.app, cfg.ColdStarts); err != nil {
			return nil, err
		}
		for i := 0; i < cfg.ColdStarts; i++ {
			if err := stopProgram(ctx, adminClient, a.id); err != nil {
				return nil, err
			}
			t := time.Now()
			resp, err := web.Get(srv.base + "/vm/" + a.id + a.app.Ready)
			if err != nil {
				return nil, fmt.Errorf("cold request to %s: %w", a.id, err)
			}
			resp.Body.Close()
			total := time.Since(t)
			if resp.StatusCode != http.StatusOK {
				return nil, fmt.Errorf("cold request to %s: status %d", a.id, resp.StatusCode)
			}
			st, err := programStatus(ctx, adminClient, a.id)
			if err != nil {
				return nil, err
			}
			cs.Runs = append(cs.Runs, ColdStartRun{Total: total, Boot: seconds(st.ColdStartSeconds), Phases: st.BootPhases})
			cfg.progress("cold start %-8s %d/%d: %v (boot %v: %s)", a.id, i+1, cfg.ColdStarts,
				total.Round(100*time.Microsecond), seconds(st.ColdStartSeconds).Round(100*time.Microsecond), st.Timeline)
		}
		cs.Phases = medianPhases(cs.Runs)
		out = append(out, cs)
	}
	return out, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// medianPhases is the median of each phase over the runs.
func medianPhases(runs []ColdStartRun) []admin.BootPhase {
	if len(runs) == 0 {
		return nil
	}
	var out []admin.BootPhase
	for i, p := range runs[0].Phases {
		var v []time.Duration
		for _, r := range runs {
			if i < len(r.Phases) && r.Phases[i].Phase == p.Phase {
				v = append(v, seconds(r.Phases[i].Seconds))
			}
		}
		slices.Sort(v)
		out = append(out, admin.BootPhase{Phase: p.Phase, Seconds: percentile(v, 50).Seconds()})
	}
	return out
}

// bareImport is the median wall time of `python3 -c 'import MODULE'` in the
// apps directory: the interpreter's start plus the app's import.
func bareImport(ctx context.Context, cfg *Config, module string, n int) (time.Duration, error) {
	var v []time.Duration
	for i := 0; i < n; i++ {
		cmd := exec.CommandContext(ctx, cfg.Python, "-c", "import "+module)
		cmd.Dir = cfg.AppsDir
		t := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("python3 -c 'import %s': %w: %s", module, err, out)
		}
		v = append(v, time.Since(t))
	}
	slices.Sort(v)
	return percentile(v, 50), nil
}

// uvicornStart is the median time from starting uvicorn on app to its
// first 200, polled every 2 ms.
func uvicornStart(ctx context.Context, cfg *Config, app App, n int) (time.Duration, error) {
	var v []time.Duration
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < n; i++ {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		t := time.Now()
		c, err := launch(cfg, "A-coldstart.log", cfg.AppsDir, cfg.Python, uvicornArgs(app, loopbackListen(port), 1)...)
		if err != nil {
			return 0, err
		}
		srv := &server{children: []*child{c}}
		for {
			resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(port) + app.Ready)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			select {
			case <-c.done:
				return 0, fmt.Errorf("uvicorn exited before answering; see %s", filepath.Join(cfg.WorkDir, "A-coldstart.log"))
			case <-ctx.Done():
				srv.stop()
				return 0, ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
			if time.Since(t) > time.Minute {
				srv.stop()
				return 0, fmt.Errorf("uvicorn did not answer within a minute")
			}
		}
		v = append(v, time.Since(t))
		srv.stop()
	}
	slices.Sort(v)
	return percentile(v, 50), nil
}

func stopProgram(ctx context.Context, c *http.Client, id string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://admin/v1/programs/"+id+"/stop", nil)
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("stopping %s: %w", id, err)
	}
	resp.Body.Close()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		st, err := programStatus(ctx, c, id)
		if err != nil {
			return err
		}
		if !st.Running {
			return nil
		}
	}
	return fmt.Errorf("%s still running 30 s after stop", id)
}

func programStatus(ctx context.Context, c *http.Client, id string) (admin.Status, error) {
	var st admin.Status
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://admin/v1/programs/"+id, nil)
	resp, err := c.Do(req)
	if err != nil {
		return st, fmt.Errorf("status of %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status of %s: HTTP %d", id, resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
