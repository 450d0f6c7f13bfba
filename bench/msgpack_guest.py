"""Design C of the benchmark: the per-request msgpack design Ferry replaces.

A faithful reimplementation of the guest side of Aleph.im's reference init
(init1.py) as published: every request is a new connection, which starts
with the vsock proxy's ``CONNECT 52\\n`` preamble (answered ``OK ...\\n``, as
Firecracker's proxy does), then carries one msgpack document
``{"scope": {..., "body": <whole body>}}``. The app is called in-process
with stdout captured, the first ``http.response.start`` and the first
``http.response.body`` it sends are taken, and one msgpack document
``{"headers", "body", "output", "output_data"}`` goes back before the
connection is closed.

The published init reads a request with a single ``read(1_001_000)``, which
truncates bigger bodies; this one reads until the msgpack document is
complete, so that the 10 MiB upload can be measured at all. Like the
published init it runs on asyncio's default event loop.

    python3 msgpack_guest.py --socket PATH --app module:app [--processes N]
"""

import argparse
import asyncio
import importlib
import os
import socket
import sys
from contextlib import redirect_stdout
from io import StringIO
from shutil import make_archive

import msgpack


async def run_python_code_http(application, scope):
    with StringIO() as buf, redirect_stdout(buf):
        scope_body = scope.pop("body")

        async def receive():
            return {"type": "http.request", "body": scope_body, "more_body": False}

        send_queue = asyncio.Queue()

        async def send(message):
            await send_queue.put(message)

        await application(scope, receive, send)
        headers = await send_queue.get()
        response_body = await send_queue.get()
        output = buf.getvalue()
    if os.path.isdir("/data") and os.listdir("/data"):
        make_archive("/opt/output", "zip", "/data")
        with open("/opt/output.zip", "rb") as f:
            output_data = f.read()
    else:
        output_data = b""
    return headers, response_body, output, output_data


def make_handler(application):
    async def handle(reader, writer):
        try:
            line = await reader.readline()
            if line.startswith(b"CONNECT "):
                writer.write(b"OK 1073741824\n")
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
            msg = None
            while msg is None:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    return
                unpacker.feed(chunk)
                for obj in unpacker:
                    msg = obj
                    break
            scope = msg["scope"]
            headers, body, output, output_data = await run_python_code_http(application, scope)
            writer.write(msgpack.dumps({"headers": headers, "body": body, "output": output,
                                        "output_data": output_data}, use_bin_type=True))
            await writer.drain()
        finally:
            writer.close()
    return handle


async def serve(sock, application):
    server = await asyncio.start_unix_server(make_handler(application), sock=sock)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    module, _, attr = args.app.partition(":")
    application = getattr(importlib.import_module(module), attr)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(args.socket)
    sock.listen(1024)
    for _ in range(args.processes - 1):
        if os.fork() == 0:
            break
    asyncio.run(serve(sock, application))


if __name__ == "__main__":
    main()
