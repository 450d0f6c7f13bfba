"""Ferry's ASGI worker: one Python process of init's worker pool.

init starts this script with a connected unix socket on file descriptor 3
(``--fd``), its control channel, and speaks the Ferry wire protocol
(protocol/SPEC.md) over it: init is the client, this worker the server.
After the HELLO exchange init sends one CONFIG frame, a JSON document::

    {"app": "main:app", "code_dir": "/opt/code", "packages": "",
     "worker": 1, "lifespan": "auto"}

The worker imports the app, runs the ASGI lifespan startup, and answers
CONFIG_RESULT (ok, or the phase, a message and the traceback). Then every
stream init opens is one ASGI ``http`` or ``websocket`` connection: request
bodies arrive as DATA frames and are handed to the app chunk by chunk,
responses go back frame by frame as the app sends them, with per-stream flow
control both ways. GOAWAY (or SIGTERM) lets in-flight requests finish, runs
the lifespan shutdown and exits.

With ``--data-fd N`` the worker also has a data channel: a connection whose
other end init passed to the host (SPEC.md section 11). The worker is the
server there too (its own HELLO) and serves the streams the host opens on
it exactly as those of the control channel; it takes no CONFIG there. When
init's GOAWAY (or SIGTERM) stops the worker, it first sends GOAWAY on the
data channel, so the host sends it nothing new, then waits for the streams
of both channels. A data channel that ends (the host dropped it) resets its
own streams only: the worker keeps serving through init.

Standard library only; uvloop is used when it can be imported. Nothing the
app prints is touched: init captures stdout and stderr line by line.
"""

import asyncio
import importlib
import inspect
import json
import mmap
import os
import signal
import socket
import struct
import sys
import traceback
import types

AGENT = b"ferry-worker-py/0.1"
PROTOCOL_VERSION = 1

# Frame types (SPEC.md section 2.1).
HELLO, PING, GOAWAY, CONFIG, CONFIG_RESULT, LOG = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
REQUEST, RESPONSE, DATA, END, RESET, WINDOW_UPDATE, WS_MESSAGE, WS_CLOSE = range(0x10, 0x18)
DATA_SHARED = 0x18
TYPE_NAMES = {
    HELLO: "HELLO", PING: "PING", GOAWAY: "GOAWAY", CONFIG: "CONFIG",
    CONFIG_RESULT: "CONFIG_RESULT", LOG: "LOG", REQUEST: "REQUEST",
    RESPONSE: "RESPONSE", DATA: "DATA", END: "END", RESET: "RESET",
    WINDOW_UPDATE: "WINDOW_UPDATE", WS_MESSAGE: "WS_MESSAGE", WS_CLOSE: "WS_CLOSE",
    DATA_SHARED: "DATA_SHARED",
}
ALLOWED_FLAGS = {
    HELLO: 0, PING: 0x04, GOAWAY: 0, CONFIG: 0, CONFIG_RESULT: 0, LOG: 0,
    REQUEST: 0x01, RESPONSE: 0x01, DATA: 0x03, END: 0x01, RESET: 0,
    WINDOW_UPDATE: 0, WS_MESSAGE: 0x1A, WS_CLOSE: 0x01, DATA_SHARED: 0x01,
}

# Flags (section 2.2).
FIN, COMPRESSED, ACK, TEXT, MORE = 0x01, 0x02, 0x04, 0x08, 0x10
FLAG_NAMES = {FIN: "FIN", COMPRESSED: "COMPRESSED", ACK: "ACK", TEXT: "TEXT", MORE: "MORE"}

# Error codes (section 6).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 4, 5, 6, 7
VERSION_MISMATCH, APP_ERROR, BODY_TOO_LARGE = 9, 12, 14

HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size  # 10
MIN_MAX_FRAME = 16 << 10
MAX_MAX_FRAME = 16 << 20
MAX_WINDOW = (1 << 31) - 1
WS_FRAME_COST = 16
# Queued payload bytes from which flush hands the parts to one vectored
# write instead of joining them.
WRITEV_MIN = 16 << 10
# The channel's write high-water mark. uvloop holds what is written until
# the end of its loop's turn unless more than this waits: then it writes at
# once. The answers to a batch of requests read together (32 FastAPI
# requests, about 3 ms of app) would otherwise all leave at its end, and the
# worker would then sit idle while the host turned them round (measured:
# the worker busy 91-94 % of the time, every write 32 answers; with 4 KiB,
# 98-100 % busy and 6 % more requests a second). It is also where the
# channel counts as paused (pause_writing) while the host does not read.
WRITE_AT = 4 << 10

# What this worker announces in its HELLO.
MY_MAX_FRAME = 64 << 10
MY_WINDOW = 256 << 10
MY_MAX_STREAMS = 1024
# The read buffer: any frame but DATA (whose payload streams through)
# must fit in it whole.
RECV_BUFFER = 256 << 10
# The send buffer asked for on the data channel (widen_send_buffer).
SEND_BUFFER = 1 << 20
# A response body piece of SHARED_MIN bytes or more goes through the host's
# shared buffer where there is one (SharedBuffer; SPEC.md 11.1).
SHARED_MIN = 64 << 10
SHARED_MAX = 64 << 20
SHARED_HEADER = 4096
SHARED_WORD = struct.Struct("=Q")  # a position in the control area
SHARED_SIZES = struct.Struct("=QQ")  # the rings' sizes, at offset 16
SHARED_REF = struct.Struct(">QI")  # a DATA_SHARED payload: position, length
# Linux's SO_SNDBUFFORCE, which the socket module does not name.
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
assert HEADER_SIZE + MY_MAX_FRAME <= RECV_BUFFER
# The C heap (see tune_malloc). A request body reaches the app in pieces of
# up to RECV_BUFFER bytes, joined into one of up to a window (MY_WINDOW)
# when the app reads less often: every block of a body comes from the heap
# below HEAP_MMAP_AT, and the heap keeps up to HEAP_KEEP of free memory at
# its top rather than giving it back to the kernel.
HEAP_MMAP_AT = 1 << 20
HEAP_KEEP = 2 << 20
# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# The largest response head sent on any channel: init's frame size
# (protocol/frame's DefaultMaxSize; contract_test.go checks), so that a
# head the host would take on a data channel, whose frames are larger, is
# refused there too: an app answers alike whichever way a request came.
MAX_RESPONSE_HEAD = 64 << 10
# A client message over this closes the websocket with 1009, as the agent
# does: protocol/contract's MaxWebSocketMessage (contract_test.go checks).
MAX_WS_MESSAGE = 16 << 20
MAX_WS_CLOSE_REASON = 123  # bytes, RFC 6455 5.5


class ProtocolError(Exception):
    """A violation that ends the connection (GOAWAY with code, then close)."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code


# ---------------------------------------------------------------------------
# Encoding: frames and the protobuf-wire subset of SPEC.md section 4.


def frame(ftype, flags, stream, payload=b""):
    return HEADER.pack(ftype, flags, stream, len(payload)) + payload


def put_varint(out, v):
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def put_uint(out, num, v):
    if v:
        put_varint(out, num << 3)
        put_varint(out, v)


def put_bytes(out, num, b, always=False):
    if b or always:
        put_varint(out, (num << 3) | 2)
        put_varint(out, len(b))
        out += b


def put_headers(out, num, headers):
    for name, value in headers:
        put_bytes(out, num, bytes(name), True)
        put_bytes(out, num, bytes(value), True)


def fields(payload):
    """Returns [(number, value)] for the fields of payload; value is an int
    (varint) or bytes. This is the hot path of every request head: one-byte
    keys and lengths (all but the rarest) are decoded inline, and a list is
    built rather than a generator resumed per field."""
    out = []
    p = bytes(payload)
    i, n = 0, len(p)
    while i < n:
        key = p[i]
        if key < 0x80:
            i += 1
        else:
            key, i = get_varint(p, i)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wire == 2:
            if i < n and p[i] < 0x80:
                ln = p[i]
                i += 1
            else:
                ln, i = get_varint(p, i)
            if ln > n - i:
                raise ValueError("truncated bytes field")
            out.append((num, p[i:i + ln]))
            i += ln
        elif wire == 0:
            if i < n and p[i] < 0x80:
                v = p[i]
                i += 1
            else:
                v, i = get_varint(p, i)
            out.append((num, v))
        else:
            raise ValueError("wire type %d" % wire)
    return out


def get_varint(p, i):
    v = shift = 0
    n = len(p)
    while True:
        if i >= n:
            raise ValueError("truncated varint")
        if shift >= 70:
            raise ValueError("varint too long")
        b = p[i]
        i += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            if v >= 1 << 64:
                raise ValueError("varint overflows 64 bits")
            return v, i
        shift += 7


def _u32(v):
    if not isinstance(v, int):
        raise ValueError("expected a varint")
    if v > 0xFFFFFFFF:
        raise ValueError("value %d does not fit 32 bits" % v)
    return v


def _bytes(v):
    if isinstance(v, int):
        raise ValueError("expected bytes")
    return v


# Message schemas: field number -> (name, kind); kind is u32, u64, bytes,
# headers (repeated, pairs) or list (repeated bytes).
SCHEMAS = {
    "hello": {1: ("version", "u32"), 2: ("role", "u32"), 3: ("max_frame_size", "u32"),
              4: ("initial_window", "u32"), 5: ("max_streams", "u32"),
              6: ("compression", "u32"), 7: ("agent", "bytes"), 8: ("shared_buffer", "u32")},
    "request": {1: ("kind", "u32"), 2: ("http_version", "bytes"), 3: ("method", "bytes"),
                4: ("scheme", "bytes"), 5: ("path", "bytes"), 6: ("raw_path", "bytes"),
                7: ("query_string", "bytes"), 8: ("root_path", "bytes"),
                9: ("headers", "headers"), 10: ("client_host", "bytes"),
                11: ("client_port", "u32"), 12: ("server_host", "bytes"),
                13: ("server_port", "u32"), 14: ("subprotocols", "list")},
    "response": {1: ("status", "u32"), 2: ("headers", "headers"), 3: ("subprotocol", "bytes")},
    "end": {1: ("trailers", "headers")},
    "reset": {1: ("code", "u32"), 2: ("message", "bytes")},
    "goaway": {1: ("last_stream_id", "u32"), 2: ("code", "u32"), 3: ("message", "bytes")},
    "ws_close": {1: ("code", "u32"), 2: ("reason", "bytes")},
    "log": {1: ("source", "bytes"), 2: ("origin", "u32"), 3: ("unix_nano", "u64"), 4: ("line", "bytes")},
    "config_result": {1: ("ok", "u32"), 2: ("phase", "bytes"), 3: ("field", "bytes"),
                      4: ("message", "bytes"), 5: ("detail", "bytes"), 6: ("timeline", "timeline")},
}


def decode(schema, payload):
    """Decodes a payload into a dict of the fields present (SPEC.md 4)."""
    spec = SCHEMAS[schema]
    out = {}
    pairs = None
    for num, v in fields(payload):
        f = spec.get(num)
        if f is None:
            continue  # unknown fields are skipped
        name, kind = f
        if kind == "bytes":
            if v.__class__ is int:
                raise ValueError("expected bytes")
            out[name] = v
        elif kind == "headers":
            if v.__class__ is int:
                raise ValueError("expected bytes")
            if pairs is None:
                pairs = {}
            pairs.setdefault(name, []).append(v)
        elif kind == "u32":
            out[name] = _u32(v)
        elif kind == "u64":
            if v.__class__ is not int:
                raise ValueError("expected a varint")
            out[name] = v
        elif kind == "list":
            out.setdefault(name, []).append(_bytes(v))
        elif kind == "timeline":
            entry = {}
            for n2, v2 in fields(_bytes(v)):
                if n2 == 1:
                    entry["phase"] = _bytes(v2)
                elif n2 == 2:
                    if not isinstance(v2, int):
                        raise ValueError("expected a varint")
                    entry["boot_nano"] = v2
            out.setdefault(name, []).append(entry)
    if pairs:
        for name, flat in pairs.items():
            if len(flat) % 2:
                raise ValueError("odd number of header occurrences")
            it = iter(flat)
            out[name] = list(zip(it, it))
    return out


# The REQUEST fields by kind, for decode_request.
REQUEST_BYTES = {2: "http_version", 3: "method", 4: "scheme", 5: "path", 6: "raw_path", 7: "query_string",
                 8: "root_path", 10: "client_host", 12: "server_host"}
REQUEST_U32 = {1: "kind", 11: "client_port", 13: "server_port"}


# The one-byte keys (field << 3 | wire type 2) of REQUEST's bytes fields,
# the headers and subprotocols among them, and the field each names.
REQUEST_BYTES_KEYS = {(num << 3) | 2: name for num, name in REQUEST_BYTES.items()}
REQUEST_HEADER_KEY, REQUEST_SUBPROTOCOL_KEY = (9 << 3) | 2, (14 << 3) | 2
REQUEST_FAST_KEYS = frozenset(REQUEST_BYTES_KEYS) | {REQUEST_HEADER_KEY, REQUEST_SUBPROTOCOL_KEY}


def decode_request(payload):
    """decode("request", payload) for the hot path (every request's head):
    the same result and the same errors, in one pass over the bytes, the
    header pairs built as they come. A bytes field with a one-byte key and
    length (all of them, in practice) is taken in a few steps, looked up by
    its key byte; anything else goes the general way. A field of the wrong
    kind is reported once the whole payload has parsed, as decode reports
    it, so that a broken field after it is the error given."""
    p = bytes(payload)
    out = {}
    headers = []
    name = None
    wrong = None  # the first field of the wrong kind, reported at the end
    fast_keys, bytes_keys = REQUEST_FAST_KEYS, REQUEST_BYTES_KEYS
    i, n = 0, len(p)
    while i < n:
        key = p[i]
        if key in fast_keys and i + 1 < n and p[i + 1] < 0x80:
            j = i + 2 + p[i + 1]
            if j > n:
                raise ValueError("truncated bytes field")
            v = p[i + 2:j]
            i = j
            if key == REQUEST_HEADER_KEY:
                if name is None:
                    name = v
                else:
                    headers.append((name, v))
                    name = None
            elif key == REQUEST_SUBPROTOCOL_KEY:
                out.setdefault("subprotocols", []).append(v)
            else:
                out[bytes_keys[key]] = v
            continue
        if key < 0x80:
            i += 1
        else:
            key, i = get_varint(p, i)
        num = key >> 3
        if num == 0:
            raise ValueError("field number 0")
        wire = key & 7
        if wire == 2:
            if i < n and p[i] < 0x80:
                ln = p[i]
                i += 1
            else:
                ln, i = get_varint(p, i)
            if ln > n - i:
                raise ValueError("truncated bytes field")
            v = p[i:i + ln]
            i += ln
            if num == 9:
                if name is None:
                    name = v
                else:
                    headers.append((name, v))
                    name = None
                continue
            field = REQUEST_BYTES.get(num)
            if field is not None:
                out[field] = v
            elif num in REQUEST_U32:
                wrong = wrong or "expected a varint"
            elif num == 14:
                out.setdefault("subprotocols", []).append(v)
        elif wire == 0:
            if i < n and p[i] < 0x80:
                v = p[i]
                i += 1
            else:
                v, i = get_varint(p, i)
            field = REQUEST_U32.get(num)
            if field is not None:
                if v > 0xFFFFFFFF:
                    wrong = wrong or "value %d does not fit 32 bits" % v
                out[field] = v
            elif num == 9 or num == 14 or num in REQUEST_BYTES:
                wrong = wrong or "expected bytes"
        else:
            raise ValueError("wire type %d" % wire)
    if wrong is not None:
        raise ValueError(wrong)
    if name is not None:
        raise ValueError("odd number of header occurrences")
    if headers:
        out["headers"] = headers
    return out


def encode(schema, msg):
    """Encodes a dict as a payload, fields in number order, zeros omitted."""
    out = bytearray()
    for num, (name, kind) in sorted(SCHEMAS[schema].items()):
        v = msg.get(name)
        if v is None:
            continue
        if kind in ("u32", "u64"):
            put_uint(out, num, int(v))
        elif kind == "bytes":
            put_bytes(out, num, bytes(v))
        elif kind == "list":
            for item in v:
                put_bytes(out, num, bytes(item), True)
        elif kind == "headers":
            put_headers(out, num, v)
        elif kind == "timeline":
            for entry in v:
                inner = bytearray()
                put_bytes(inner, 1, entry.get("phase", b""))
                put_uint(inner, 2, entry.get("boot_nano", 0))
                put_bytes(out, num, bytes(inner), True)
    return bytes(out)


def encode_response(status, headers, subprotocol=b""):
    """encode("response", ...) for the hot path: status, then the header
    fields (names and values as bytes), then the subprotocol."""
    out = bytearray()
    out.append(0x08)
    put_varint(out, status)
    for pair in headers:
        for b in pair:  # the name, then the value: field 2 each
            out.append(0x12)
            ln = len(b)
            if ln < 0x80:
                out.append(ln)
            else:
                put_varint(out, ln)
            out += b
    if subprotocol:
        put_bytes(out, 3, subprotocol)
    return bytes(out)


def as_bytes(v, what):
    """v, a header name or value or a body the app sent, as bytes: bytes,
    bytearray or memoryview (copied: the app may change a buffer once send
    returns). Anything else is the app's mistake and raises TypeError, as
    uvicorn does, rather than bytes(v)'s surprise (bytes(5) is five NUL
    bytes: a Content-Length given as an int became a header of NULs, and
    one of 200_000_000 allocated that many)."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError("%s must be bytes, not %s" % (what, type(v).__name__))


def header_pairs(headers):
    """The response headers an app sent, as (lower-case name, value) pairs
    of bytes; a name or value that is not bytes raises TypeError."""
    out = []
    for name, value in headers:
        if name.__class__ is not bytes:
            name = as_bytes(name, "a header name")
        if value.__class__ is not bytes:
            value = as_bytes(value, "a header value")
        out.append((name.lower(), value))
    return out


# The close codes an app may send (RFC 6455 7.4): 1004 to 1006 and 1015
# are reserved and never sent, 1016 to 2999 are the protocol's to assign.
def valid_close_code(code):
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# ---------------------------------------------------------------------------
# ASGI: loading the app.


class AppLoadError(Exception):
    def __init__(self, phase, field, message, detail):
        super().__init__(message)
        self.phase, self.field, self.message, self.detail = phase, field, message, detail


def load_app(spec, code_dir, packages):
    """Imports module:attr.path with the code (then packages) first on sys.path."""
    module_name, _, attrs = spec.partition(":")
    if not module_name or not attrs:
        raise AppLoadError("app", "entrypoint", "%r is not module:attribute" % spec, "")
    for path in reversed([p for p in (code_dir, packages) if p]):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    if code_dir:
        os.chdir(code_dir)
    try:
        obj = importlib.import_module(module_name)
    except BaseException as e:  # SystemExit from a module is an import failure too
        raise AppLoadError("app", "entrypoint", "cannot import %s: %s: %s" % (module_name, type(e).__name__, e),
                           traceback.format_exc())
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppLoadError("app", "entrypoint", "module %s has no attribute %s" % (module_name, attrs), "")
    if not callable(obj):
        raise AppLoadError("app", "entrypoint", "%s is not callable" % spec, "")
    return as_asgi3(obj)


def as_asgi3(app):
    """Wraps an ASGI 2 double callable; ASGI 3 apps are returned as they are."""
    if inspect.isclass(app):
        asgi3 = hasattr(app, "__await__")
    elif inspect.isfunction(app) or inspect.ismethod(app):
        asgi3 = inspect.iscoroutinefunction(app)
    else:
        call = getattr(app, "__call__", None)
        asgi3 = inspect.iscoroutinefunction(call)
        if not asgi3:
            try:
                asgi3 = len(inspect.signature(app).parameters) == 3
            except (TypeError, ValueError):
                asgi3 = True
    if asgi3:
        return app

    async def asgi2_adapter(scope, receive, send):
        instance = app(scope)
        return await instance(receive, send)

    return asgi2_adapter


# ---------------------------------------------------------------------------
# Streams.

ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


class Stream:
    """One stream opened by init: an ASGI http or websocket connection."""

    __slots__ = ("session", "id", "head", "websocket", "chunks", "buffered", "remote_fin",
                 "reset_code", "readable", "send_window", "writable", "consumed",
                 "response_started", "response_done", "pending_head", "local_fin",
                 "accepted", "ws_closed_local", "ws_partial", "ws_close",
                 "connect_sent", "body_done", "recv_credit", "task")

    def __init__(self, session, sid, head, fin):
        self.session = session
        self.id = sid
        self.head = head
        self.websocket = head.get("kind", 0) == 1
        self.chunks = []          # received body bytes (http) or fragments (websocket)
        self.buffered = 0
        self.remote_fin = fin
        self.reset_code = None    # set when the stream was reset (by either side)
        # Made when the app first waits (most requests never do).
        self.readable = None      # asyncio.Event: something for receive()
        self.send_window = session.peer_window
        self.writable = None      # asyncio.Event: send window returned
        self.consumed = 0
        self.response_started = False
        self.response_done = False
        self.pending_head = None
        self.local_fin = False
        self.accepted = False
        self.ws_closed_local = False
        self.ws_partial = None    # bytearray: the fragments so far of the message being received
        self.ws_close = None      # (code, reason) received
        self.connect_sent = False   # websocket.connect was delivered
        self.body_done = False      # the final http.request (more_body False) was delivered
        self.recv_credit = MY_WINDOW
        self.task = None

    # -- inbound (called by the session) --

    def take_credit(self, cost):
        """Charges received bytes to the window; False if the peer overran it."""
        if cost > self.recv_credit:
            self.reset(FLOW_CONTROL_ERROR, "flow control window exceeded")
            return False
        self.recv_credit -= cost
        return True

    def on_data(self, payload, fin):
        if payload:
            self.chunks.append(payload)
            self.buffered += len(payload)
        if fin:
            self.remote_fin = True
        self.wake_reader()

    def credit(self, n):
        """Returns receive credit once half a window has been consumed."""
        if self.remote_fin or self.reset_code is not None:
            return
        self.consumed += n
        if self.consumed >= MY_WINDOW // 2:
            inc, self.consumed = self.consumed, 0
            self.recv_credit += inc
            self.session.write(frame(WINDOW_UPDATE, 0, self.id, struct.pack(">I", inc)))

    def wake_reader(self):
        if self.readable is not None:
            self.readable.set()

    async def wait_readable(self):
        """Waits until wake_reader is called; the caller has checked, with
        nothing awaited since, that there is nothing to take."""
        self.readable = cleared(self.readable)
        await self.readable.wait()

    def on_reset(self, code):
        if self.reset_code is None:
            self.reset_code = code
        self.wake_reader()
        self.wake_writer()

    # -- scope --

    def scope(self):
        h = self.head
        client = None
        if h.get("client_host"):
            client = (h["client_host"].decode("utf-8", "replace"), h.get("client_port", 0))
        server = None
        if h.get("server_host"):
            server = (h["server_host"].decode("utf-8", "replace"), h.get("server_port", 0))
        path = h.get("path", b"/").decode("utf-8", "replace") or "/"
        scope = {
            "type": "websocket" if self.websocket else "http",
            "asgi": ASGI_VERSION,
            "http_version": h.get("http_version", b"1.1").decode("latin-1") or "1.1",
            "scheme": h.get("scheme", b"").decode("latin-1") or ("ws" if self.websocket else "http"),
            "path": path,
            "raw_path": h.get("raw_path") or path.encode("utf-8"),
            "query_string": h.get("query_string", b""),
            "root_path": h.get("root_path", b"").decode("utf-8", "replace"),
            "headers": h.get("headers", []),
            "client": client,
            "server": server,
            "extensions": {},
        }
        if self.websocket:
            scope["subprotocols"] = [p.decode("latin-1") for p in h.get("subprotocols", [])]
            scope["extensions"] = {"websocket.http.response": {}}
        else:
            scope["method"] = h.get("method", b"GET").decode("latin-1") or "GET"
        state = self.session.state
        if state is not None:
            scope["state"] = dict(state)
        return scope

    # -- http --

    async def receive(self):
        if self.websocket:
            return await self.ws_receive()
        while True:
            if self.reset_code is not None or self.response_done:
                return {"type": "http.disconnect"}
            if self.chunks or (self.remote_fin and not self.body_done):
                body = self.chunks[0] if len(self.chunks) == 1 and self.chunks[0].__class__ is bytes else b"".join(self.chunks)
                self.chunks.clear()
                n, self.buffered = self.buffered, 0
                self.body_done = self.remote_fin
                self.credit(n)
                return {"type": "http.request", "body": body, "more_body": not self.remote_fin}
            await self.wait_readable()

    async def send(self, message):
        if self.websocket:
            return await self.ws_send(message)
        t = message["type"]
        if t == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            status = message["status"]
            if status.__class__ is not int:
                status = int(status)
            if not 100 <= status <= 999:
                raise RuntimeError("invalid status %r" % status)
            # Encoded before the response counts as started: a head the
            # app got wrong (a header not bytes) is its error, answered
            # 500, as uvicorn answers it.
            self.pending_head = encode_response(status, header_pairs(message.get("headers", ())))
            self.response_started = True
            if self.head_too_large(self.pending_head):
                return
            # Sent with the first body chunk when the app sends one right
            # away, else on its own when the app waits or the loop turns.
            self.session.hold_head(self)
        elif t == "http.response.body":
            if not self.response_started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_done:
                raise RuntimeError("http.response.body after the response ended")
            if self.reset_code is not None:
                return  # the client left; like uvicorn, the rest is dropped
            more = message.get("more_body", False)
            body = message.get("body", b"")
            head = self.pending_head
            if (not more and head is not None and body.__class__ is bytes
                    and len(body) <= self.send_window and len(body) <= self.session.peer_max_frame
                    and (len(body) < SHARED_MIN or self.session.shared is None)):
                # The common answer, a head and one body that fits: both
                # frames in one piece, the way send_body would send them.
                self.pending_head = None
                if body:
                    self.send_window -= len(body)
                    self.session.write(b"".join((HEADER.pack(RESPONSE, 0, self.id, len(head)), head,
                                                 HEADER.pack(DATA, FIN, self.id, len(body)), body)))
                else:
                    self.session.write(HEADER.pack(RESPONSE, FIN, self.id, len(head)) + head)
                self.local_fin = True
            else:
                await self.send_body(body, not more)
            if not more:
                self.finish_response()
        else:
            raise RuntimeError("unexpected ASGI message %r on an http connection" % t)

    def head_too_large(self, head):
        """Refuses a response head larger than the peer accepts in one
        frame (SPEC.md 5.6), or than MAX_RESPONSE_HEAD: the stream is
        reset, the host answers 502 for this request only, and what the
        app sends next on it is dropped."""
        limit = min(self.session.peer_max_frame, MAX_RESPONSE_HEAD)
        if len(head) <= limit:
            return False
        print("ferry worker: response head of %d bytes exceeds the %d bytes a frame carries; "
              "the request is answered 502" % (len(head), limit), file=sys.stderr, flush=True)
        self.pending_head = None
        self.reset(APP_ERROR, "response head of %d bytes exceeds the maximum frame size %d" % (len(head), limit))
        return True

    def take_head(self):
        """The pending RESPONSE frame, if the head has not been sent yet."""
        if self.pending_head is None:
            return b""
        head, self.pending_head = self.pending_head, None
        return frame(RESPONSE, 0, self.id, head)

    def flush_head(self):
        if self.pending_head is not None and self.reset_code is None:
            self.session.write(self.take_head())

    async def send_body(self, body, fin):
        """Sends body as DATA frames within the peer's window and frame size,
        the pending head (if any) in the same write as the first frame;
        pieces of SHARED_MIN bytes or more through the host's shared
        buffer (DATA_SHARED) where there is one and it has room."""
        if body.__class__ is not bytes:
            # A bytearray (or other buffer) the app may change once send
            # returns: the frames must not point into it.
            body = as_bytes(body, "a response body")
        view = memoryview(body)
        limit = self.session.peer_max_frame
        while self.reset_code is None:
            if not view:
                if fin and self.pending_head is not None:
                    head, self.pending_head = self.pending_head, None
                    self.session.write(frame(RESPONSE, FIN, self.id, head))
                    self.local_fin = True
                elif fin:
                    self.session.write(frame(DATA, FIN, self.id))
                    self.local_fin = True
                else:
                    self.flush_head()
                break
            n = min(len(view), limit, self.send_window)
            if n <= 0:
                self.flush_head()
                await self.wait_window()
                continue
            last = fin and n == len(view)
            self.send_window -= n
            shared = self.session.shared
            pos = shared.put(view[:n]) if shared is not None and n >= SHARED_MIN else None
            if pos is not None:
                # Copied into the host's shared buffer: the frame names
                # the bytes instead of carrying them (SPEC.md 11.1).
                self.session.write(self.take_head() + HEADER.pack(DATA_SHARED, FIN if last else 0, self.id, SHARED_REF.size)
                                   + SHARED_REF.pack(pos, n))
                view = view[n:]
                if last:
                    self.local_fin = True
                    break
                continue
            # The payload goes out as a view of the app's bytes: no copy
            # here, one vectored write in flush.
            self.session.write_payload(self.take_head() + HEADER.pack(DATA, FIN if last else 0, self.id, n), view[:n])
            view = view[n:]
            if last:
                self.local_fin = True
                break
        if self.session.paused and not self.local_fin and self.reset_code is None:
            # The channel toward init is over its high-water mark: an app
            # that goes on sending waits for it to drain. A finished answer
            # does not: there is nothing left to hold back, and under
            # sustained load the channel can stay paused for long enough
            # that streams waiting here, done as far as init knows, filled
            # MY_MAX_STREAMS and new requests were refused (503).
            await self.session.drain()

    async def wait_window(self):
        self.writable = cleared(self.writable)
        await self.writable.wait()

    def wake_writer(self):
        if self.writable is not None:
            self.writable.set()

    def finish_response(self):
        self.response_done = True
        if not self.remote_fin and self.reset_code is None:
            # Response complete, request body not needed (SPEC.md 5.3).
            self.session.write(frame(RESET, 0, self.id, encode("reset", {"code": NO_ERROR, "message": b"response complete"})))
        self.wake_reader()
        if len(self.session.streams) == 1:
            # No other request in flight to share the write with: the
            # answer leaves now (at one connection, every answer).
            self.session.flush(now=True)

    # -- websocket --

    async def ws_receive(self):
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        # A message is assembled only here, while the app waits for it:
        # fragments that arrive meanwhile stay within the window, whose
        # credit goes back as they are taken, so a message the app does
        # not ask for waits in the client's TCP connection, not in memory.
        # Fragments are gathered in one growing buffer, so that what a
        # message holds is its bytes however many fragments (empty ones
        # included) it came in.
        while True:
            if self.chunks and not self.ws_closed_local:
                payload, text, more = self.chunks.pop(0)
                self.credit(len(payload) + WS_FRAME_COST)
                partial = self.ws_partial
                if len(payload) + (len(partial) if partial is not None else 0) > MAX_WS_MESSAGE:
                    self.ws_partial = None
                    self.ws_close_local(1009, "message too big")
                    return {"type": "websocket.disconnect", "code": 1009, "reason": "message too big"}
                if partial is None and not more:
                    data = payload  # the usual: a whole message in one frame
                else:
                    if partial is None:
                        partial = self.ws_partial = bytearray()
                    partial += payload
                    if more:
                        continue
                    data = bytes(partial)
                    self.ws_partial = None
                if text:
                    return {"type": "websocket.receive", "text": data.decode("utf-8", "replace")}
                return {"type": "websocket.receive", "bytes": data}
            if self.ws_close is not None:
                code, reason = self.ws_close
                return {"type": "websocket.disconnect", "code": code, "reason": reason}
            if self.reset_code is not None or self.remote_fin:
                return {"type": "websocket.disconnect", "code": 1006}
            await self.wait_readable()

    def on_ws_message(self, payload, flags):
        if self.ws_closed_local:
            # Closed on this side: nothing more is received, and the credit
            # goes back at once so that the peer is not held up until its
            # own close.
            self.credit(len(payload) + WS_FRAME_COST)
            return
        self.chunks.append((payload, bool(flags & TEXT), bool(flags & MORE)))
        self.wake_reader()

    def ws_close_local(self, code, reason):
        """Closes this side (WS_CLOSE) and drops what was received but not
        delivered, returning its credit."""
        self.ws_closed_local = True
        self.local_fin = True
        # A close reason is at most 123 bytes (RFC 6455 5.5): a longer one is
        # cut on a character boundary rather than refused.
        reason = reason.encode("utf-8")[:MAX_WS_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
        self.session.write(frame(WS_CLOSE, FIN, self.id, encode("ws_close", {"code": code, "reason": reason})))
        self.ws_drop_received()

    def ws_drop_received(self):
        dropped = sum(len(c[0]) + WS_FRAME_COST for c in self.chunks)
        self.chunks.clear()
        self.ws_partial = None
        if dropped:
            self.credit(dropped)

    def ws_finished(self):
        """The app is done with the websocket: a peer that has not closed
        its side is told to stop sending (RESET NO_ERROR after our
        WS_CLOSE), so that no relay waits for window that nobody returns."""
        self.ws_drop_received()
        if not self.remote_fin and self.reset_code is None:
            self.reset(NO_ERROR, "websocket closed")

    def on_ws_close(self, code, reason):
        self.ws_close = (code, reason)
        self.remote_fin = True
        if not self.ws_closed_local and self.reset_code is None:
            # Answer with our own close (SPEC.md 5.5).
            self.ws_closed_local = True
            self.local_fin = True
            self.session.write(frame(WS_CLOSE, FIN, self.id, encode("ws_close", {"code": code})))
        self.wake_reader()
        self.wake_writer()  # a send waiting for window ends: this side is closed

    async def ws_send(self, message):
        t = message["type"]
        if self.reset_code is not None or self.ws_closed_local:
            if t == "websocket.close":
                return
            raise ConnectionClosed("websocket is closed")
        if t == "websocket.accept":
            if self.accepted or self.response_started:
                raise RuntimeError("websocket.accept sent twice")
            headers = header_pairs(message.get("headers", ()))
            self.accepted = self.response_started = True
            sub = message.get("subprotocol")
            head = encode("response", {"status": 101, "headers": headers, "subprotocol": sub.encode() if sub else b""})
            if self.head_too_large(head):
                return
            self.session.write(frame(RESPONSE, 0, self.id, head))
        elif t == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            if message.get("text") is not None:
                await self.ws_send_message(message["text"].encode("utf-8"), True)
            else:
                await self.ws_send_message(as_bytes(message.get("bytes") or b"", "websocket.send's bytes"), False)
        elif t == "websocket.close":
            code = int(message.get("code", 1000) or 1000)
            if not valid_close_code(code):
                if self.accepted:
                    raise RuntimeError("websocket.close with code %d, which may not be sent (RFC 6455 7.4)" % code)
                # Before accept the close is a denial: the client gets 403
                # whatever the code (an app's close(code=403) included), as
                # under uvicorn and hypercorn; the code never reaches it.
                code = 1000
            self.ws_close_local(code, message.get("reason") or "")
        elif t == "websocket.http.response.start":
            if self.accepted or self.response_started:
                raise RuntimeError("websocket.http.response.start after the handshake")
            status = int(message["status"])
            if not 200 <= status <= 599:
                raise RuntimeError("websocket.http.response.start with status %d: a denial is 200 to 599" % status)
            self.pending_head = encode("response", {"status": status, "headers": header_pairs(message.get("headers", ()))})
            self.response_started = True
            if self.head_too_large(self.pending_head):
                return
        elif t == "websocket.http.response.body":
            if not self.response_started or self.accepted:
                raise RuntimeError("websocket.http.response.body without websocket.http.response.start")
            more = message.get("more_body", False)
            await self.send_body(message.get("body", b""), not more)
            if not more:
                self.ws_closed_local = True
        else:
            raise RuntimeError("unexpected ASGI message %r on a websocket" % t)

    async def ws_send_message(self, data, text):
        view = memoryview(data)
        limit = self.session.peer_max_frame
        while True:
            if self.reset_code is not None:
                raise ConnectionClosed("websocket reset")
            if self.ws_closed_local:
                # The peer closed while the message went out, and this
                # side answered with its own close: nothing follows it.
                raise ConnectionClosed("websocket closed")
            avail = self.send_window - WS_FRAME_COST
            if avail < 0 or (avail == 0 and view):
                await self.wait_window()
                continue
            n = min(len(view), limit, avail)
            more = n < len(view)
            self.send_window -= n + WS_FRAME_COST
            self.session.write_payload(HEADER.pack(WS_MESSAGE, (TEXT if text else 0) | (MORE if more else 0), self.id, n), view[:n])
            view = view[n:]
            if not more:
                break
        if self.session.paused and self.reset_code is None:
            await self.session.drain()

    def reset(self, code, msg):
        if self.reset_code is None:
            self.reset_code = code
            self.session.write(frame(RESET, 0, self.id, encode("reset", {"code": code, "message": msg.encode()})))
        self.wake_reader()
        self.wake_writer()


def cleared(event):
    """event cleared, or a new asyncio.Event for None: a stream makes its
    events only when the app first waits (most requests never do)."""
    if event is None:
        return asyncio.Event()
    event.clear()
    return event


@types.coroutine
def drive(awaitable, session):
    """Awaits what the app returned, as `await awaitable` would, and
    flushes what it queued on session each time one of its steps ends,
    before it waits on the loop (the end of a request is run_stream's to
    flush). Writes made inside a step need no callback at the next turn of
    the loop then: measured, that callback cost the worker one more turn
    of its loop (an epoll_wait and two no-op callbacks) for every request
    at one connection."""
    if isinstance(awaitable, types.CoroutineType) or (
            isinstance(awaitable, types.GeneratorType) and inspect.isawaitable(awaitable)):
        it = awaitable  # a coroutine, or a generator made one by types.coroutine
    else:
        try:
            it = awaitable.__await__()
        except AttributeError:
            raise TypeError("object %s can't be used in 'await' expression" % type(awaitable).__name__) from None
    # await needs only an iterator: send and throw are used when there.
    send, throw = getattr(it, "send", None), getattr(it, "throw", None)
    value = error = None
    try:
        while True:
            session.in_app = True
            try:
                if error is None:
                    awaited = send(value) if send is not None else next(it)
                elif throw is not None:
                    awaited = throw(error)
                else:
                    raise error
            except StopIteration as done:
                return done.value
            finally:
                session.in_app = False
            if session.out or session.heads:
                session.flush()
            try:
                value, error = (yield awaited), None
            except GeneratorExit:
                raise
            except BaseException as e:  # cancellation included: the app gets it
                value, error = None, e
    except BaseException:
        # Whatever ends the app other than its own return or exception
        # (the driver closed, a failed flush) ends its coroutine too, as
        # `await` would.
        close = getattr(it, "close", None)
        if close is not None:
            close()
        raise


class ConnectionClosed(OSError):
    """Raised by send() on a websocket that is closed or was reset."""


# ---------------------------------------------------------------------------
# The session.


class Worker:
    """What a worker's sessions (control and data channels) share: the app,
    its lifespan and state, whether the worker is stopping, and the future
    that ends the process."""

    def __init__(self, done):
        self.done = done
        self.app = None
        self.state = None
        self.lifespan = None
        self.stopping = False
        self.sessions = []
        # The apps' running request tasks: a stream reset by the peer
        # leaves its session while its app may still run, and the
        # lifespan shutdown waits for these too, as uvicorn waits for
        # its tasks.
        self.tasks = set()


class Session(asyncio.BufferedProtocol):
    def __init__(self, worker_done, worker=None, data=False, shared=None):
        self.worker = worker if worker is not None else Worker(worker_done)
        self.shared = shared      # SharedBuffer from the host, or None
        self.worker.sessions.append(self)
        self.data = data  # a data channel: streams only, no CONFIG, its loss is not the worker's end
        self.loop = asyncio.get_event_loop()
        self.transport = None
        self.fd = -1              # the channel's socket, for flush(now=True) (-1: none known)
        self.rbuf = bytearray(RECV_BUFFER)  # what the loop reads into
        self.rview = memoryview(self.rbuf)
        self.rlen = 0             # bytes at the front of rbuf: an incomplete frame
        self.partial = None       # [stream or None, flags, bytes left] of a DATA frame arriving
        self.out = []
        self.out_size = 0         # payload bytes queued by write_payload
        self.heads = []           # streams whose RESPONSE head may still wait in pending_head
        self.flush_scheduled = False
        self.in_app = False       # an app's step runs under drive(), which flushes for it
        self.paused = False
        self.drained = asyncio.Event()
        self.drained.set()
        self.peer = None
        self.peer_max_frame = MIN_MAX_FRAME
        self.peer_window = 0
        self.streams = {}
        self.last_peer_id = 0
        self.config_task = None
        self.going_away = False
        self.closed = False

    # The app and its state are the worker's, for every session.
    @property
    def app(self):
        return self.worker.app

    @app.setter
    def app(self, app):
        self.worker.app = app

    @property
    def state(self):
        return self.worker.state

    # -- transport callbacks --

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
        transport.set_write_buffer_limits(high=WRITE_AT)
        hello = {"version": PROTOCOL_VERSION, "role": 2, "max_frame_size": MY_MAX_FRAME,
                 "initial_window": MY_WINDOW, "max_streams": MY_MAX_STREAMS, "agent": AGENT}
        if self.shared is not None:
            hello["shared_buffer"] = 1  # the host may send DATA_SHARED (SPEC.md 11.1)
        transport.write(frame(HELLO, 0, 0, encode("hello", hello)))

    def connection_lost(self, exc):
        self.closed = True
        # An app waiting in drain() for the channel to take its bytes
        # would wait forever: it wakes (its stream is reset just below).
        self.resume_writing()
        for st in list(self.streams.values()):
            st.on_reset(CANCEL)
        self.streams.clear()
        if self.data:
            return
        if not self.worker.done.done():
            self.worker.done.set_result("init closed the connection")

    def pause_writing(self):
        self.paused = True
        self.drained.clear()

    def resume_writing(self):
        self.paused = False
        self.drained.set()

    async def drain(self):
        if self.paused:
            await self.drained.wait()

    def write(self, data):
        """Queues bytes for the next flush (see schedule_flush): what is
        queued until then goes out in one write."""
        if self.closed:
            return
        self.out.append(data)
        self.schedule_flush()

    def write_payload(self, header, payload):
        """Queues a frame's header and its payload, a view of the app's
        bytes (not copied: a big one goes out with the rest in one
        vectored write)."""
        if self.closed:
            return
        self.out.append(header)
        self.out.append(payload)
        self.out_size += len(payload)
        self.schedule_flush()

    def hold_head(self, st):
        """st's RESPONSE head waits in st.pending_head for the first body
        frame, to go out with it; if none comes before the app waits or
        the loop turns, flush sends it alone."""
        self.heads.append(st)
        self.schedule_flush()

    def schedule_flush(self):
        """Everything queued goes out in one write: at the next turn of the
        loop, or, while an app's step runs under drive(), when the step
        ends (the app waits or returns), which saves the loop a turn per
        request."""
        if not self.flush_scheduled and not self.in_app:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self, now=False):
        """Writes what is queued, the held RESPONSE heads first. With now,
        the bytes go to the socket right away rather than at the end of
        the loop's turn, where uvloop's transport writes what it is given:
        for an answer with no other request in flight to share its write,
        which then leaves before the app has unwound (its middleware,
        FastAPI's exit stack) and its task has ended. Whatever the socket
        does not take at once, and everything while the transport still
        holds bytes, goes through the transport, in order."""
        self.flush_scheduled = False
        if self.heads:
            heads, self.heads = self.heads, []
            for st in heads:
                if st.pending_head is not None and st.reset_code is None:
                    self.out.append(st.take_head())
        if self.out and not self.closed:
            if self.out_size >= WRITEV_MIN:
                # Big payloads: one writev of every part, no joining copy
                # (measured: a 1 MiB response copied four times in Python
                # cost more than its system calls).
                self.transport.writelines(self.out)
            else:
                data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
                n = 0
                if now and self.fd >= 0 and not self.transport.get_write_buffer_size():
                    try:
                        n = os.write(self.fd, data)
                    except OSError:
                        pass  # would block, or an error the transport will report
                if n < len(data):
                    self.transport.write(data[n:] if n else data)
            self.out = []
            self.out_size = 0

    # Reading: the event loop reads straight into the session's buffer
    # (asyncio.BufferedProtocol), not into a new bytes object per read:
    # measured, a fresh 256 KiB object per read cost the worker a page
    # fault per 4 KiB of every upload (2,700 per 10 MiB), more than the
    # copies themselves.

    def get_buffer(self, sizehint):
        return self.rview[self.rlen:]

    def buffer_updated(self, nbytes):
        n = self.rlen + nbytes
        pos = self.parse(self.rview, n)
        tail = n - pos
        if tail and pos:
            # An incomplete header, or a frame other than DATA, moves to
            # the front and waits for the rest.
            self.rbuf[:tail] = bytes(self.rview[pos:n])
        self.rlen = tail

    def data_received(self, data):
        """Feeds bytes as the loop would (for tests and tools)."""
        view = memoryview(data)
        while view and not self.closed:
            buf = self.get_buffer(len(view))
            k = min(len(buf), len(view))
            buf[:k] = view[:k]
            self.buffer_updated(k)
            view = view[k:]

    def parse(self, data, n):
        """Applies the frames in data[:n] and returns the offset of the
        first byte not used (the start of an incomplete frame). A DATA
        frame's payload is handed to its stream as it arrives (copied out
        once, into the bytes the app receives); any other frame waits
        until it is whole."""
        pos = 0
        try:
            if self.partial is not None:
                pos = self.data_piece(data, 0, n)
            while n - pos >= HEADER_SIZE:
                ftype, flags, sid, length = HEADER.unpack_from(data, pos)
                if length > MY_MAX_FRAME:
                    raise ProtocolError(FRAME_SIZE_ERROR, "frame of %d bytes exceeds the maximum %d" % (length, MY_MAX_FRAME))
                start = pos + HEADER_SIZE
                end = start + length
                if ftype == DATA:
                    self.partial = [None, flags, length]
                    self.check_header(ftype, flags, sid)
                    self.partial[0] = self.data_start(flags, sid, length)
                    pos = self.data_piece(data, start, n)
                    continue
                if end > n:
                    self.check_header(ftype, flags, sid)
                    break
                pos = end
                self.handle_frame(ftype, flags, sid, bytes(data[start:end]))
        except ProtocolError as e:
            self.partial = None
            self.fail(e.code, str(e))
            return n
        return pos

    def data_piece(self, data, start, limit):
        """Hands the bytes of data[start:limit] that belong to the DATA
        frame being received to its stream; returns where they end."""
        st, flags, left = self.partial
        n = min(left, limit - start)
        end = start + n
        left -= n
        if st is not None and self.streams.get(st.id) is st:
            if n or (not left and flags & FIN):
                st.on_data(bytes(data[start:end]), not left and flags & FIN)
        if left:
            self.partial[2] = left
        else:
            self.partial = None
        return end

    def check_header(self, ftype, flags, sid):
        """The checks of every frame's header (SPEC.md 2)."""
        allowed = ALLOWED_FLAGS.get(ftype)
        if allowed is None:
            raise ProtocolError(PROTOCOL_ERROR, "unknown frame type 0x%02x" % ftype)
        if flags & ~allowed:
            raise ProtocolError(PROTOCOL_ERROR, "flags 0x%02x not allowed on %s" % (flags, TYPE_NAMES[ftype]))
        if (ftype < 0x10) != (sid == 0):
            raise ProtocolError(PROTOCOL_ERROR, "%s on stream %d" % (TYPE_NAMES[ftype], sid))
        if self.peer is None and ftype != HELLO:
            raise ProtocolError(PROTOCOL_ERROR, "first frame must be HELLO")

    def data_start(self, flags, sid, length):
        """Checks a DATA frame's header against its stream and charges its
        length to the window; returns the stream its payload goes to, or
        None when it is dropped (the stream was answered with a RESET)."""
        st = self.streams.get(sid)
        if st is None:
            self.unknown_stream(DATA, sid)
            return None
        if flags & COMPRESSED:
            st.reset(PROTOCOL_ERROR, "compression was not negotiated")
            return None
        if st.remote_fin:
            st.reset(STREAM_CLOSED, "DATA after FIN")
            return None
        if st.websocket:
            st.reset(PROTOCOL_ERROR, "DATA on a websocket")
            return None
        if not st.take_credit(length):
            return None
        return st

    def fail(self, code, reason):
        print("ferry worker: protocol error: %s" % reason, file=sys.stderr, flush=True)
        self.write(frame(GOAWAY, 0, 0, encode("goaway", {"last_stream_id": self.last_peer_id, "code": code, "message": reason.encode()})))
        self.flush()
        self.closed = True
        self.transport.close()

    # -- frames --

    def handle_frame(self, ftype, flags, sid, payload):
        """Applies one whole frame other than DATA (data_received streams
        those in)."""
        self.check_header(ftype, flags, sid)
        if self.peer is None:
            return self.on_hello(payload)
        if ftype == REQUEST:
            return self.on_request(flags, sid, payload)
        if ftype == WINDOW_UPDATE:
            if len(payload) != 4:
                raise ProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
            st = self.streams.get(sid)
            if st is None:
                return self.unknown_stream(ftype, sid)
            inc = struct.unpack(">I", payload)[0]
            if inc == 0 or st.send_window + inc > MAX_WINDOW:
                return st.reset(FLOW_CONTROL_ERROR, "bad WINDOW_UPDATE")
            st.send_window += inc
            st.wake_writer()
            return
        if ftype == DATA_SHARED:
            if self.shared is None:
                raise ProtocolError(PROTOCOL_ERROR, "DATA_SHARED, but no shared buffer was given")
            data = self.shared.take(payload)  # (released before anything else: the ring is in order)
            st = self.data_start(flags, sid, len(data))
            if st is not None and self.streams.get(sid) is st:
                st.on_data(data, flags & FIN)
            return
        if ftype == PING:
            if len(payload) != 8:
                raise ProtocolError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
            return
        if ftype == RESET:
            try:
                r = decode("reset", payload)
            except ValueError as e:
                raise ProtocolError(PROTOCOL_ERROR, "bad RESET: %s" % e)
            st = self.streams.pop(sid, None)
            if st is None:
                return self.unknown_stream(ftype, sid)
            st.on_reset(r.get("code", 0) or CANCEL)
            return
        if ftype == END:
            st = self.streams.get(sid)
            if st is None:
                return self.unknown_stream(ftype, sid)
            if st.remote_fin:
                return st.reset(STREAM_CLOSED, "END after FIN")
            return st.on_data(b"", True)
        if ftype == WS_MESSAGE:
            st = self.streams.get(sid)
            if st is None:
                return self.unknown_stream(ftype, sid)
            if flags & COMPRESSED:
                return st.reset(PROTOCOL_ERROR, "compression was not negotiated")
            if not st.websocket or st.remote_fin:
                return st.reset(PROTOCOL_ERROR, "WS_MESSAGE on a stream that takes none")
            if st.take_credit(len(payload) + WS_FRAME_COST):
                st.on_ws_message(payload, flags)
            return
        if ftype == WS_CLOSE:
            st = self.streams.get(sid)
            if st is None:
                return self.unknown_stream(ftype, sid)
            try:
                c = decode("ws_close", payload)
            except ValueError:
                return st.reset(PROTOCOL_ERROR, "bad WS_CLOSE")
            return st.on_ws_close(c.get("code", 1000) or 1000, c.get("reason", b"").decode("utf-8", "replace"))
        if ftype == GOAWAY:
            self.going_away = True
            if not self.data:
                self.loop.create_task(self.shutdown("init sent GOAWAY"))
            return
        if ftype == CONFIG:
            if self.data:
                self.write(frame(CONFIG_RESULT, 0, 0, encode("config_result", {
                    "phase": b"validate", "message": b"a data channel takes no configuration"})))
                return
            if self.config_task is not None:
                self.write(frame(CONFIG_RESULT, 0, 0, encode("config_result", {
                    "phase": b"validate", "message": b"already configured"})))
                return
            self.config_task = self.loop.create_task(self.configure(payload))
            return
        if ftype == HELLO:
            raise ProtocolError(PROTOCOL_ERROR, "second HELLO")
        # RESPONSE (we never open streams), CONFIG_RESULT, LOG: not for a worker.
        if sid:
            st = self.streams.get(sid)
            if st is not None:
                return st.reset(PROTOCOL_ERROR, "%s on a stream the host opened" % TYPE_NAMES[ftype])
            return self.unknown_stream(ftype, sid)

    def unknown_stream(self, ftype, sid):
        if sid % 2 == 0 or sid > self.last_peer_id:
            raise ProtocolError(PROTOCOL_ERROR, "%s on stream %d, which was never opened" % (TYPE_NAMES[ftype], sid))
        if ftype not in (RESET, WINDOW_UPDATE):
            self.write(frame(RESET, 0, sid, encode("reset", {"code": STREAM_CLOSED, "message": b"stream closed"})))

    def on_hello(self, payload):
        try:
            h = decode("hello", payload)
        except ValueError as e:
            raise ProtocolError(PROTOCOL_ERROR, "bad HELLO: %s" % e)
        if h.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(VERSION_MISMATCH, "peer speaks version %s" % h.get("version"))
        if h.get("role") != 1:
            raise ProtocolError(PROTOCOL_ERROR, "peer must be a client")
        if not MIN_MAX_FRAME <= h.get("max_frame_size", 0) <= MAX_MAX_FRAME:
            raise ProtocolError(PROTOCOL_ERROR, "bad max_frame_size")
        if not 1 <= h.get("initial_window", 0) <= MAX_WINDOW:
            raise ProtocolError(FLOW_CONTROL_ERROR, "bad initial_window")
        self.peer = h
        self.peer_max_frame = h["max_frame_size"]
        self.peer_window = h["initial_window"]

    def on_request(self, flags, sid, payload):
        if sid % 2 == 0:
            raise ProtocolError(PROTOCOL_ERROR, "REQUEST on stream %d, which is the worker's to open" % sid)
        if sid <= self.last_peer_id:
            raise ProtocolError(PROTOCOL_ERROR, "REQUEST reuses stream id %d" % sid)
        self.last_peer_id = sid
        if self.going_away or self.worker.stopping or self.app is None or len(self.streams) >= MY_MAX_STREAMS:
            reason = b"worker not ready" if self.app is None else b"worker busy or going away"
            self.write(frame(RESET, 0, sid, encode("reset", {"code": REFUSED_STREAM, "message": reason})))
            return
        try:
            head = decode_request(payload)
        except ValueError as e:
            self.write(frame(RESET, 0, sid, encode("reset", {"code": PROTOCOL_ERROR, "message": ("bad REQUEST: %s" % e).encode()})))
            return
        st = Stream(self, sid, head, bool(flags & FIN))
        self.streams[sid] = st
        st.task = self.loop.create_task(self.run_stream(st))
        self.worker.tasks.add(st.task)

    # -- running the app --

    async def run_stream(self, st):
        try:
            await drive(self.app(st.scope(), st.receive, st.send), self)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            self.app_failed(st, e)
        else:
            self.app_returned(st)
        finally:
            self.worker.tasks.discard(st.task)
            # The app is done with the stream; frames still in flight for it
            # are answered STREAM_CLOSED, which the peer ignores.
            if self.streams.get(st.id) is st:
                del self.streams[st.id]
            if st.websocket:
                st.ws_finished()
            # A finished answer goes to the transport now rather than at
            # the end of the loop iteration: with a slow app and a big
            # batch of requests, holding every answer until the whole
            # batch is done leaves the host idle meanwhile (measured:
            # FastAPI at 32 connections, 4,200 -> 5,500 req/s). uvloop's
            # transport writes it at the end of its turn, or at once past
            # WRITE_AT.
            if self.out or self.heads:
                self.flush()

    def app_failed(self, st, e):
        if isinstance(e, asyncio.CancelledError) and st.reset_code is not None:
            return
        if isinstance(e, ConnectionClosed) and st.reset_code is not None:
            return
        print("ferry worker: exception in ASGI application\n" + "".join(traceback.format_exception(type(e), e, e.__traceback__)),
              file=sys.stderr, end="", flush=True)
        if st.reset_code is not None:
            return
        if st.websocket:
            if not st.response_started and not st.ws_closed_local:
                # Like a denial: the host answers the client 500.
                st.response_started = True
                self.write(frame(RESPONSE, 0, st.id, encode("response", {"status": 500, "headers": [(b"content-type", b"text/plain; charset=utf-8")]}))
                           + frame(DATA, FIN, st.id, b"Internal Server Error"))
            elif not st.ws_closed_local:
                st.ws_closed_local = True
                self.write(frame(WS_CLOSE, FIN, st.id, encode("ws_close", {"code": 1011, "reason": b"internal error"})))
            return
        if not st.response_started:
            self.send_500(st)
        elif not st.response_done:
            st.reset(APP_ERROR, "application error after the response started")

    def app_returned(self, st):
        if st.reset_code is not None:
            return
        if st.websocket:
            if not st.response_started and not st.ws_closed_local:
                # Returned without accepting: a denial (SPEC.md 5.2).
                st.ws_closed_local = True
                self.write(frame(WS_CLOSE, FIN, st.id, encode("ws_close", {"code": 1000})))
            elif st.pending_head is not None or (st.response_started and not st.accepted and not st.ws_closed_local):
                st.reset(APP_ERROR, "application returned without completing its denial response")
            elif st.accepted and not st.ws_closed_local:
                st.ws_closed_local = True
                self.write(frame(WS_CLOSE, FIN, st.id, encode("ws_close", {"code": 1000})))
            return
        if not st.response_started:
            print("ferry worker: ASGI application returned without starting a response", file=sys.stderr, flush=True)
            self.send_500(st)
        elif not st.response_done:
            print("ferry worker: ASGI application returned without completing the response", file=sys.stderr, flush=True)
            st.reset(APP_ERROR, "application returned without completing the response")

    def send_500(self, st):
        """Answers a plain 500 to an http request the app failed to answer."""
        body = b"Internal Server Error"
        self.write(frame(RESPONSE, 0, st.id, encode("response", {"status": 500, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]}))
            + frame(DATA, FIN, st.id, body))
        st.response_started = True
        st.local_fin = True
        st.finish_response()

    # -- configuration and lifespan --

    async def configure(self, payload):
        try:
            try:
                cfg = json.loads(payload)
                app_spec = cfg["app"]
            except (ValueError, KeyError, TypeError) as e:
                raise AppLoadError("validate", "", "bad worker configuration: %s" % e, "")
            app = load_app(app_spec, cfg.get("code_dir", ""), cfg.get("packages", ""))
            w = self.worker
            w.lifespan = Lifespan(app)
            await w.lifespan.startup(cfg.get("lifespan", "auto"))
            w.state = w.lifespan.state
            w.app = app
            result = {"ok": 1}
        except AppLoadError as e:
            result = {"phase": e.phase.encode(), "field": e.field.encode(), "message": e.message.encode(),
                      "detail": e.detail.encode()}
            if e.detail:
                print("ferry worker: %s\n%s" % (e.message, e.detail), file=sys.stderr, end="", flush=True)
        self.write(frame(CONFIG_RESULT, 0, 0, encode("config_result", result)))

    async def shutdown(self, reason):
        w = self.worker
        if w.stopping:
            return
        w.stopping = True
        self.going_away = True
        # The host sends nothing new on the data channels once told.
        for s in w.sessions:
            if s.data and not s.closed:
                s.going_away = True
                s.write(frame(GOAWAY, 0, 0, encode("goaway", {"last_stream_id": s.last_peer_id, "code": NO_ERROR,
                                                             "message": b"worker stopping"})))
                s.flush()
        # Let every request's app finish (each stream's task: those of
        # streams the peer reset included); init bounds how long with its
        # grace period.
        while w.tasks:
            await asyncio.sleep(0.01)
        if w.lifespan is not None:
            await w.lifespan.shutdown()
        for s in w.sessions:
            s.flush()
        if not w.done.done():
            w.done.set_result(reason)


class Lifespan:
    """Runs the ASGI lifespan protocol exactly as the spec says."""

    def __init__(self, app):
        self.app = app
        self.state = {}
        self.supported = True
        self.to_app = asyncio.Queue()
        self.from_app = asyncio.Queue()
        self.task = None
        self.started = False  # lifespan.startup.complete was received

    async def startup(self, mode):
        if mode == "off":
            self.supported = False
            return
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        self.task = asyncio.get_event_loop().create_task(self.run(scope))
        await self.to_app.put({"type": "lifespan.startup"})
        msg = await self.from_app.get()
        if msg["type"] == "lifespan.startup.complete":
            self.started = True
            return
        if msg["type"] not in ("lifespan.startup.failed", "lifespan.error", "lifespan.returned"):
            # Not an answer the spec allows: said as it is, not taken for
            # an app without lifespan support.
            self.supported = False
            if mode == "on":
                raise AppLoadError("lifespan", "entrypoint", "lifespan startup failed: the app sent %r" % msg["type"], "")
            print("ferry worker: the app answered lifespan.startup with %r; continuing without lifespan" % msg["type"],
                  file=sys.stderr, flush=True)
            return
        if msg["type"] == "lifespan.startup.failed":
            raise AppLoadError("lifespan", "entrypoint", "lifespan startup failed: %s" % last_line(msg.get("message", "")),
                               msg.get("message", ""))
        # The app raised or returned before answering.
        exc = msg.get("exc")
        self.supported = False
        if mode == "on":
            raise AppLoadError("lifespan", "entrypoint", "lifespan startup failed: %s: %s" % (type(exc).__name__, exc) if exc else
                               "the app does not support lifespan", msg.get("detail", ""))
        if exc is not None:
            print("ferry worker: ASGI 'lifespan' protocol appears unsupported (%s: %s); continuing without it"
                  % (type(exc).__name__, exc), file=sys.stderr, flush=True)

    async def run(self, scope):
        try:
            await self.app(scope, self.receive, self.send)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            if self.started:
                # Past its startup nobody waits for an answer until the
                # shutdown (which finds the task done and asks nothing):
                # said now, or never.
                print("ferry worker: exception in the ASGI 'lifespan' protocol after startup\n" + traceback.format_exc(),
                      file=sys.stderr, end="", flush=True)
            await self.from_app.put({"type": "lifespan.error", "exc": e, "detail": traceback.format_exc()})
        else:
            await self.from_app.put({"type": "lifespan.returned"})

    async def receive(self):
        return await self.to_app.get()

    async def send(self, message):
        await self.from_app.put(message)

    async def shutdown(self):
        if not self.supported or self.task is None or self.task.done():
            return
        await self.to_app.put({"type": "lifespan.shutdown"})
        try:
            msg = await asyncio.wait_for(self.from_app.get(), timeout=30)
        except asyncio.TimeoutError:
            print("ferry worker: lifespan shutdown timed out", file=sys.stderr, flush=True)
            return
        if msg["type"] == "lifespan.shutdown.failed":
            print("ferry worker: lifespan shutdown failed: %s" % msg.get("message", ""), file=sys.stderr, flush=True)
        elif msg["type"] == "lifespan.error":
            print("ferry worker: lifespan shutdown raised:\n%s" % msg.get("detail", ""), file=sys.stderr, end="", flush=True)


def last_line(s):
    """The last line of a message: of a traceback (what Starlette sends
    with lifespan.startup.failed), the exception itself."""
    s = (s or "").strip()
    lines = s.splitlines()
    return lines[-1] if lines else "no message"


# ---------------------------------------------------------------------------


def widen_send_buffer(sock):
    """Asks for a send buffer of SEND_BUFFER on the data channel. A unix
    socket's default (net.core.wmem_default, 208 KiB) holds less than
    one window of one stream (the host grants 256 KiB): a big answer's
    write then went out in parts, each after a wake-up for room. Measured
    with 1 MiB answers (BENCHMARKS.md, session 27): 1,812-1,860 answers a
    second against 1,592-1,596, and the worker's CPU per answer down from
    300 to 215 µs. It bounds the kernel memory that waits for the host
    to read: 2 MiB per worker at most (Linux doubles the figure asked
    for). Forced where the worker may (CAP_NET_ADMIN), else capped by
    net.core.wmem_max; a socket that refuses keeps its default."""
    for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER)
            return
        except OSError:
            pass


class SharedBuffer:
    """The host's shared body buffer on a data channel (SPEC.md 11.1): a
    memory the host maps too, where a big body crosses instead of going
    through the socket. Its first SHARED_HEADER bytes are the control
    area: the response ring's released position (the host writes it),
    the request ring's (the worker writes it), and the two rings' sizes;
    then the response ring, then the request ring. Positions only grow
    and wrap around their ring. The worker copies a big response body
    piece into the response ring and sends DATA_SHARED naming it (put); a
    piece that does not fit goes in DATA frames, and the worker never
    waits for room. The host does the same with request bodies, which the
    worker copies out of the request ring as their frames come (take)."""

    def __init__(self, fd):
        size = os.fstat(fd).st_size
        if not SHARED_HEADER <= size <= SHARED_MAX:
            raise ValueError("a shared buffer of %d bytes" % size)
        self.mem = mmap.mmap(fd, size)
        self.out_size, self.in_size = SHARED_SIZES.unpack_from(self.mem, 16)
        if (self.out_size < SHARED_MIN or self.in_size < SHARED_MIN
                or SHARED_HEADER + self.out_size + self.in_size > size):
            self.mem.close()
            raise ValueError("rings of %d and %d bytes in a buffer of %d" % (self.out_size, self.in_size, size))
        self.in_at = SHARED_HEADER + self.out_size
        self.produced = 0  # the response ring's position after the last piece put
        self.taken = 0     # the request ring's position after the last piece taken

    def put(self, data):
        """Copies data into the response ring and returns its position,
        or None if the ring has no room for it in one piece."""
        n = len(data)
        released = SHARED_WORD.unpack_from(self.mem, 0)[0]
        pos = self.produced
        off = pos % self.out_size
        if off + n > self.out_size:  # it would wrap: it goes at the start
            pos += self.out_size - off
            off = 0
        if pos + n - released > self.out_size:
            return None
        self.mem[SHARED_HEADER + off:SHARED_HEADER + off + n] = data
        self.produced = pos + n
        return pos

    def take(self, payload):
        """The request body bytes a DATA_SHARED frame from the host names,
        copied out of the request ring, which are then released to the
        host."""
        if len(payload) != SHARED_REF.size:
            raise ProtocolError(FRAME_SIZE_ERROR, "DATA_SHARED payload of %d bytes" % len(payload))
        pos, n = SHARED_REF.unpack(payload)
        off = pos % self.in_size
        if not 0 < n <= MY_MAX_FRAME or pos < self.taken or off + n > self.in_size or pos + n - self.taken > self.in_size:
            raise ProtocolError(PROTOCOL_ERROR, "DATA_SHARED of %d bytes at %d is not in the ring (taken: %d)" % (n, pos, self.taken))
        data = self.mem[self.in_at + off:self.in_at + off + n]
        self.taken = pos + n
        SHARED_WORD.pack_into(self.mem, 8, self.taken)
        return data


async def connect_data(fd, done, worker):
    """Serves the data channel on fd with a session of its own, once the
    host's first bytes have come (with the shared buffer, if any)."""
    loop = asyncio.get_event_loop()
    data = socket.socket(fileno=fd)
    data.setblocking(False)
    shared = await take_shared(data)
    widen_send_buffer(data)
    await loop.connect_accepted_socket(lambda: Session(done, worker=worker, data=True, shared=shared), data)


async def take_shared(sock):
    """Waits for the host's first bytes on a data channel (or its end) and
    looks at them, without taking them, for the shared buffer's descriptor
    sent with its HELLO; returns a SharedBuffer or None (no descriptor:
    another transport, or a host that has none)."""
    loop = asyncio.get_event_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
        _, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(4 * 4), socket.MSG_PEEK | socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None  # (the session meets the same error)
    finally:
        loop.remove_reader(sock.fileno())
    fds = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack("%di" % (len(data) // 4), data[:len(data) - len(data) % 4]))
    shared = None
    try:
        if len(fds) == 1:
            shared = SharedBuffer(fds[0])
    except (OSError, ValueError) as e:
        print("ferry worker: the host's shared buffer is unusable (%s); bodies go in DATA frames" % e,
              file=sys.stderr, flush=True)
    finally:
        for fd in fds:
            os.close(fd)
    return shared


async def serve(fd, data_fd=None):
    loop = asyncio.get_event_loop()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    done = loop.create_future()
    session = None

    def make():
        nonlocal session
        session = Session(done)
        return session

    await loop.connect_accepted_socket(make, sock)
    data_channel = None
    if data_fd is not None:
        # A task of its own: the host gets the channel only once this worker
        # has answered its CONFIG (init passes it then, SPEC.md 11), and
        # the shared buffer comes with the host's HELLO on it.
        data_channel = loop.create_task(connect_data(data_fd, done, session.worker))
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, lambda s=sig: loop.create_task(session.shutdown("signal %d" % s)))
        except (NotImplementedError, RuntimeError):
            pass
    reason = await done
    if data_channel is not None:
        data_channel.cancel()
    for s in session.worker.sessions:
        if s.transport is not None:
            s.flush()
            s.transport.close()
    return reason


def tune_malloc(environ=os.environ):
    """Sets the C heap's thresholds (HEAP_MMAP_AT, HEAP_KEEP) so that the
    memory of one body's pieces is reused for the next ones. glibc's
    defaults give a block over 128 KiB a mapping of its own (a threshold it
    raises as such blocks are freed), and hand the heap's free top back to
    the kernel beyond twice that: either way the pages of each new piece
    were new to the process, a page fault per 4 KiB. Measured (10 MiB
    uploads, wrk -c4): 575 to 873 faults an upload, half of the worker's
    CPU time (a fault is dear in a VM); with these settings none, and 65
    to 88 uploads a second became 133 to 136, the workers' memory growing
    no more (1.5 MiB). A threshold the program sets itself in
    GLIBC_TUNABLES is left as it is. Returns the names of the thresholds
    set: none with a libc whose mallopt refuses them (musl's) or that has
    none."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    wanted = [(name, param, value) for name, param, value in (
        ("mmap_threshold", M_MMAP_THRESHOLD, HEAP_MMAP_AT),
        ("trim_threshold", M_TRIM_THRESHOLD, HEAP_KEEP),
    ) if "glibc.malloc." + name not in tunables]
    if not wanted:
        return []
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return []
    return [name for name, param, value in wanted if mallopt(param, value) == 1]


def main(argv):
    tune_malloc()
    fd, data_fd = 3, None
    args = argv[1:]
    while len(args) >= 2:
        if args[0] == "--fd":
            fd = int(args[1])
        elif args[0] == "--data-fd":
            data_fd = int(args[1])
        args = args[2:]
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(fd, data_fd))


if __name__ == "__main__":
    main(sys.argv)
