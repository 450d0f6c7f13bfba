#!/usr/bin/env bash
# make demo: serve examples/hello (FastAPI) through the host agent with the
# sandbox backend, and print a curl command that reaches it.
set -euo pipefail
cd "$(dirname "$0")/.."
listen="${DEMO_LISTEN:-127.0.0.1:8080}"

# The example needs Debian's FastAPI for /usr/bin/python3.
if ! /usr/bin/python3 -c 'import fastapi' 2>/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "demo: installing python3-fastapi and python3-uvloop (Debian packages)" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-fastapi python3-uvloop >/dev/null ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-fastapi python3-uvloop >/dev/null; }
	else
		echo "demo: /usr/bin/python3 cannot import fastapi; install python3-fastapi (apt-get install python3-fastapi)" >&2
		exit 1
	fi
fi

cat <<MSG
demo: starting the host agent; in another terminal try:

    curl http://$listen/
    curl -N http://$listen/stream

(Ctrl-C stops the agent and the program.)
MSG
exec bin/host-agent run --listen "$listen" examples/hello main:app
