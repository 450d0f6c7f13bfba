"""Counts visits in Ferry's guest API store (README "Guest API").

Run it with `host-agent serve` (the store is the agent's): every request
to / adds one to the key "visits" and answers the count. The calls are
plain HTTP to $FERRY_API_URL with the standard library: any language can
make them.
"""
import json
import os
import urllib.error
import urllib.request

from fastapi import FastAPI

API = os.environ["FERRY_API_URL"]  # set by init in every VM

app = FastAPI()


def call(method, path, body=None):
    """One call to the guest API: (status, body bytes)."""
    req = urllib.request.Request(API + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:  # 4xx/5xx: {"error": {"code", "message"}}
        return err.code, err.read()


@app.get("/")
def visit():
    # Not atomic: two requests at once may count one visit. Good enough
    # for a counter; a program that needs more keeps one worker.
    status, value = call("GET", "/v1/kv/visits")
    if status == 200:
        visits = int(value) + 1
    elif status == 404:  # no_such_key: the first visit
        visits = 1
    else:  # rate_limited, unavailable...: the count is there, unread
        return {"error": json.loads(value)}
    status, answer = call("PUT", "/v1/kv/visits", str(visits).encode())
    if status != 200:
        return {"error": json.loads(answer)}
    _, props = call("GET", "/v1/properties")
    return {"visits": visits, "program": json.loads(props)["program"]}
