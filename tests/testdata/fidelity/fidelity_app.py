"""The HTTP fidelity harness's ASGI app (tests/fidelity_test.go).

Plain ASGI 3, no framework. It records what it saw of each request (the
scope's type, method, path, raw_path, query_string, headers in order and
http_version, the request body joined and whether the body ended) and
answers as the request asks. The same file runs under uvicorn, hypercorn
and Ferry; the harness compares what each app saw and what each client got.

Routes:
  /_fidelity/take   the records since the last take, as JSON (not recorded)
  /_fidelity/probe  200 "probe": is a connection still open? (not recorded)
  /respond?...      answers as the query says:
                      status=N       the status (default 200)
                      h=name:value   a response header (repeatable; given any,
                                     no content-type is added)
                      body=TEXT      the body (default "ok\\n")
                      chunks=N       the body in N pieces, no content-length
                      pause=S        with chunks: S seconds between pieces
                      nolength=1     no content-length
                      read=0         answer without reading the request body
  anything else     200, content-type text/plain, "ok\\n"
Websockets: accepted, sent the text "hello", then read until the client
leaves; ?ws=close closes before accepting (a rejection).

Bytes are recorded as latin-1 text, so that JSON carries them exactly.
"""

import asyncio
import json
from urllib.parse import parse_qsl

seen = []


def text(b):
    if isinstance(b, str):  # not bytes where ASGI says bytes: say so
        return "str:" + b
    return bytes(b).decode("latin-1")


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def control(path, send):
    if path == "/_fidelity/take":
        body = json.dumps(seen).encode()
        seen.clear()
    else:
        body = b"probe"
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def websocket(scope, receive, send, query):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if query.get("ws") == "close":
        await send({"type": "websocket.close"})
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hello"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "http" and scope["path"].startswith("/_fidelity/"):
        return await control(scope["path"], send)
    record = {
        "type": scope["type"],
        "method": scope.get("method"),
        "path": scope["path"],
        "raw_path": None if scope.get("raw_path") is None else text(scope["raw_path"]),
        "query_string": text(scope["query_string"]),
        "headers": [[text(n), text(v)] for n, v in scope["headers"]],
        "http_version": scope.get("http_version"),
    }
    seen.append(record)
    pairs = parse_qsl(text(scope["query_string"]), keep_blank_values=True, encoding="latin-1")
    query = dict(pairs)
    if scope["type"] == "websocket":
        return await websocket(scope, receive, send, query)
    if scope["path"] != "/respond":
        pairs, query = [], {}

    body, complete = b"", False
    if query.get("read") != "0":
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                complete = True
                break
        record["body"] = text(body)
        record["complete"] = complete

    headers = [tuple(v.encode("latin-1").split(b":", 1)) for k, v in pairs if k == "h"]
    if not headers:
        headers = [(b"content-type", b"text/plain")]
    out = query.get("body", "ok\n").encode("latin-1")
    chunks = int(query.get("chunks", "0"))
    if not chunks and query.get("nolength") != "1":
        headers.append((b"content-length", str(len(out)).encode()))
    await send({"type": "http.response.start", "status": int(query.get("status", "200")), "headers": headers})
    if not chunks:
        await send({"type": "http.response.body", "body": out})
        return
    size = -(-len(out) // chunks)
    pause = float(query.get("pause", "0"))
    for i in range(chunks):
        if i and pause:
            await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": out[i * size:(i + 1) * size], "more_body": True})
    await send({"type": "http.response.body", "body": b""})
