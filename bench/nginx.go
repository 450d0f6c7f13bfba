package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Design A′ is the shape of the VM platforms that proxy to an HTTP server
// inside the VM: nginx in front of uvicorn, talking HTTP/1.1 to it over a
// unix socket with keep-alive. nginx runs as the harness's child with its
// own prefix, configuration, pid file, error log and temp directories
// under the work directory: the system's nginx (/etc/nginx, its service)
// is never read or touched.

// nginxSite is what design A′'s nginx.conf is made from.
type nginxSite struct {
	Prefix string // nginx's -p directory: the configuration, pid file and temp directories
	Port   int    // loopback port it listens on
	Socket string // uvicorn's unix socket
	// AsRoot: the master runs as root, so the worker is told to stay root
	// (by default it would switch to nobody, who may not reach the socket
	// or the work directory).
	AsRoot bool
}

// nginxTempDirs are the temp directories nginx creates at start; all are
// put under the prefix (Debian's defaults are in /var/lib/nginx).
var nginxTempDirs = []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"}

// nginxConfig returns design A′'s nginx.conf. The choices, each what a
// platform fronting an app would do and none of them a handicap:
//
//   - one worker process (with the master, which only waits: nginx's
//     production shape), daemon off so that it stays the harness's child;
//   - the upstream over a unix socket with keep-alive: HTTP/1.1 and an
//     empty Connection header for plain requests, so connections are
//     reused; Upgrade and "Connection: upgrade" for websockets (the map
//     gives "" unless the client asked to upgrade);
//   - no access log; keep-alive for up to a million requests per
//     connection on both sides (nginx's default closes a connection every
//     1,000 requests, a reconnection per 1,000 that A and B do not make);
//   - bodies streamed both ways through 64 KiB buffers (B's relay buffer
//     size) rather than buffered whole or spilled to temp files: B streams
//     too, and a platform that carries websockets and long responses must;
//     no limit on the request body (the default 1 MiB refuses the uploads);
//   - the upstream's idle connections closed after 4 s, before uvicorn's own
//     5 s keep-alive timeout, so nginx never reuses one uvicorn is closing.
func nginxConfig(s nginxSite) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# design A′ of ferry-bench: nginx in front of uvicorn (generated)")
	p("daemon off;")
	p("master_process on;")
	p("worker_processes 1;")
	if s.AsRoot {
		p("user root root;")
	}
	p("pid %s;", filepath.Join(s.Prefix, "nginx.pid"))
	p("error_log stderr warn;")
	p("events {")
	p("    worker_connections 1024;")
	p("}")
	p("http {")
	p("    access_log off;")
	p("    keepalive_requests 1000000;")
	p("    client_max_body_size 0;")
	p("    client_body_buffer_size 64k;")
	for _, d := range nginxTempDirs {
		p("    %s_temp_path %s;", d, filepath.Join(s.Prefix, d))
	}
	p("    upstream uvicorn {")
	p("        server unix:%s;", s.Socket)
	p("        keepalive 128;")
	p("        keepalive_requests 1000000;")
	p("        keepalive_timeout 4s;")
	p("    }")
	p("    map $http_upgrade $connection_upgrade {")
	p("        default upgrade;")
	p(`        "" "";`)
	p("    }")
	p("    server {")
	p("        listen 127.0.0.1:%d;", s.Port)
	p("        location / {")
	p("            proxy_pass http://uvicorn;")
	p("            proxy_http_version 1.1;")
	p("            proxy_set_header Host $host;")
	p("            proxy_set_header Upgrade $http_upgrade;")
	p("            proxy_set_header Connection $connection_upgrade;")
	p("            proxy_buffering off;")
	p("            proxy_request_buffering off;")
	p("            proxy_buffer_size 64k;")
	p("            proxy_buffers 4 64k;") // unused unbuffered, but must fit the size above
	p("        }")
	p("    }")
	p("}")
	return b.String()
}

// nginxArgs is nginx's command line for a configuration written in prefix;
// its errors go to its standard error (the harness's log of it), from the
// start on (-e: before the configuration is read).
func nginxArgs(prefix string) []string {
	return []string{"-p", prefix, "-c", filepath.Join(prefix, "nginx.conf"), "-e", "stderr"}
}

// startNginx runs design A′: uvicorn with A's settings on a unix socket,
// and nginx in front of it.
func startNginx(ctx context.Context, cfg *Config, app App, procs int) (*server, error) {
	if _, err := os.Stat(cfg.Nginx); err != nil {
		return nil, fmt.Errorf("nginx: %w (make bench installs Debian's nginx-light)", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("Aprime-%s-%d", app.Module, procs)
	prefix := filepath.Join(cfg.WorkDir, name)
	if err := os.RemoveAll(prefix); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(prefix, 0o755); err != nil {
		return nil, err
	}
	sock := filepath.Join(prefix, "uvicorn.sock")
	conf := nginxConfig(nginxSite{Prefix: prefix, Port: port, Socket: sock, AsRoot: os.Geteuid() == 0})
	if err := os.WriteFile(filepath.Join(prefix, "nginx.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	uv, err := launch(cfg, name+"-uvicorn.log", cfg.AppsDir, cfg.Python, uvicornArgs(app, []string{"--uds", sock}, procs)...)
	if err != nil {
		return nil, err
	}
	front, err := launch(cfg, name+"-nginx.log", prefix, cfg.Nginx, nginxArgs(prefix)...)
	if err != nil {
		syscall.Kill(-uv.cmd.Process.Pid, syscall.SIGKILL)
		<-uv.done
		return nil, err
	}
	return ready(ctx, cfg, port, app, name+"-nginx.log", uv, front)
}

// loopbackListen is design A's listening arguments to uvicorn.
func loopbackListen(port int) []string {
	return []string{"--host", "127.0.0.1", "--port", strconv.Itoa(port)}
}
