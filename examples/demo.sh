#!/usr/bin/env bash
# make demo: serve examples/hello (FastAPI) through the host agent with the
# sandbox backend, and print a curl command that reaches it.
set -euo pipefail
cd "$(dirname "$0")/.."
listen="${DEMO_LISTEN:-127.0.0.1:8080}"

# examples/demo-deps.sh (run by make demo first) installed Debian's FastAPI.
if ! /usr/bin/python3 -c 'import fastapi' 2>/dev/null; then
	echo "demo: /usr/bin/python3 cannot import fastapi; install python3-fastapi (apt-get install python3-fastapi)" >&2
	exit 1
fi

cat <<MSG
demo: starting the host agent; in another terminal try:

    curl http://$listen/
    curl -N http://$listen/stream

(Ctrl-C stops the agent and the program.)
MSG
exec bin/host-agent run --listen "$listen" examples/hello main:app
