package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// singleFileApp is a plain ASGI app in one file that says where it runs
// and what else its code directory holds.
const singleFileApp = `
import json, os

def where():
    here = os.path.dirname(os.path.abspath(__file__))
    neighbours = sorted(n for n in os.listdir(here) if n != "__pycache__")
    return json.dumps({"file": os.path.basename(__file__), "neighbours": neighbours}).encode()

async def app(scope, receive, send):
    if scope["type"] == "http":
        for message in ({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]},
                        {"type": "http.response.body", "body": where()}):
            await send(message)
`

// singleFileServer is an executable in one file: an HTTP server on $PORT.
const singleFileServer = `#!/usr/bin/python3
import http.server, json, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"file": os.path.basename(__file__)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
`

// A manifest whose plain code is one file is served end to end: an ASGI
// module (main:app from main.py, and from a file named otherwise: the VM
// sees it under the name its entrypoint asks for) and an executable. The
// VM sees that file alone, not its neighbours on the host.
func TestPlainSingleFileProgramsAreServed(t *testing.T) {
	requirePythonModules(t, "json")
	requireTool(t, "curl")
	dir := t.TempDir()
	files := map[string]struct {
		content string
		mode    os.FileMode
	}{
		"main.py":       {singleFileApp, 0o644},
		"app-v2.py":     {singleFileApp, 0o644},
		"server.py":     {singleFileServer, 0o755},
		"neighbour.py":  {"secret = 'not the program'\n", 0o644},
		"settings.toml": {"not = 'the program'\n", 0o644},
	}
	for name, f := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(f.content), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	config := fmt.Sprintf(`{"programs": {
		"single":  {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		            "resources": {"vcpus": 1}, "on": {"http": true}},
		"renamed": {"code": {"encoding": "plain", "entrypoint": "main:app", "interface": "asgi", "path": %q},
		            "resources": {"vcpus": 1}, "on": {"http": true}},
		"exe":     {"code": {"encoding": "plain", "entrypoint": "server.py", "interface": "executable", "path": %q},
		            "on": {"http": true}}}}`,
		filepath.Join(dir, "main.py"), filepath.Join(dir, "app-v2.py"), filepath.Join(dir, "server.py"))
	p := serveAgent(t, config, agentOptions{})
	for _, c := range []struct{ program, file string }{{"single", "main.py"}, {"renamed", "main.py"}, {"exe", "server.py"}} {
		checkSingleFile(t, c.program, []byte(curl(t, "http://"+p.addr+"/vm/"+c.program+"/")), c.file, c.program != "exe")
	}
}

// checkSingleFile checks what a single-file program said of itself: that
// it runs as file and, if it lists them, that it is alone in its code
// directory.
func checkSingleFile(t *testing.T, program string, answer []byte, file string, listed bool) {
	t.Helper()
	var got struct {
		File       string   `json:"file"`
		Neighbours []string `json:"neighbours"`
	}
	if err := json.Unmarshal(answer, &got); err != nil {
		t.Fatalf("%s answered %q: %v", program, answer, err)
	}
	if got.File != file {
		t.Errorf("%s runs from %q, want %q", program, got.File, file)
	}
	if listed && (len(got.Neighbours) != 1 || got.Neighbours[0] != file) {
		t.Errorf("%s sees %v in its code directory, want only %s", program, got.Neighbours, file)
	}
}

// init takes a configuration whose code is one plain file and serves it:
// an ASGI module is copied into the code directory under the name its
// entrypoint asks for (main.py for main:app, whatever the file's name).
func TestInitServesAPlainFileModule(t *testing.T) {
	requirePythonModules(t, "json")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := filepath.Join(writeApp(t, map[string]string{"app-v2.py": singleFileApp}), "app-v2.py")
	d := startDevInit(t)
	d.mustConfigure(t, map[string]any{"program_id": "plain", "interface": "asgi", "entrypoint": "main:app", "workers": 1,
		"code": map[string]any{"encoding": "plain", "path": src}})
	if r, err := request(ctx, d.sess, "GET", "/", nil, nil); err != nil || r.status != 200 {
		t.Fatalf("GET /: %v %v", r, err)
	} else {
		checkSingleFile(t, "init", r.body, "main.py", true)
	}
}
