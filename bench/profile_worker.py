"""Measures the ASGI worker's own cost per request, in-process.

Feeds REQUEST frames straight into the worker's Session (no sockets, no
init) with a transport that only counts writes, runs an app from
bench/apps, and prints microseconds per request; with --profile, cProfile's
top functions. This is how the worker's hot path was profiled for
BENCHMARKS.md (py-spy is not available here).

    /usr/bin/python3 bench/profile_worker.py [--app plain|fastapi_app] [--profile]
"""

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("FERRY_WORKER_DIR") or os.path.join(HERE, "..", "guest", "app", "asgi"))
sys.path.insert(0, os.path.join(HERE, "apps"))
import worker as fw  # noqa: E402


class CountingTransport:
    def __init__(self):
        self.writes = 0

    def write(self, data):
        self.writes += 1

    def close(self):
        pass


def request_frame(sid, path, query):
    head = fw.encode("request", {
        "kind": 0, "http_version": b"1.1", "method": b"GET", "scheme": b"http", "path": path,
        "raw_path": path, "query_string": query, "root_path": b"",
        "headers": [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
        "client_host": b"127.0.0.1", "client_port": 40000, "server_host": b"127.0.0.1", "server_port": 8080})
    return fw.frame(fw.REQUEST, fw.FIN, sid, head)


async def run(app, frames, batch):
    n = len(frames)
    done = asyncio.get_event_loop().create_future()
    session = fw.Session(done)
    session.transport = CountingTransport()
    session.peer = {"max_frame_size": 64 << 10}
    session.peer_max_frame, session.peer_window = 64 << 10, 256 << 10
    session.worker.app, session.worker.state = app, {}
    start = time.perf_counter()
    for i in range(0, n, batch):
        session.data_received(b"".join(frames[i:i + batch]))
        while session.streams:
            await asyncio.sleep(0)
    took = time.perf_counter() - start
    return took / n * 1e6, session.transport.writes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", default="plain")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    module = __import__(args.app)
    path, query = (b"/items/42", b"q=bench") if args.app == "fastapi_app" else (b"/", b"")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    frames = [request_frame(2 * i + 1, path, query) for i in range(args.requests)]  # (not timed)
    for batch in (1, 16):
        us, writes = asyncio.run(run(module.app, frames, batch))
        print("%s: %d requests, %2d per read: %.1f us/request, %d writes" % (args.app, args.requests, batch, us, writes))
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run(module.app, frames, 16))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
