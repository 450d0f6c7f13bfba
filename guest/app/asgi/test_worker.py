"""Checks the worker's framing against protocol/testdata/vectors.json.

Run by the Go test TestPythonFramingMatchesGoldenVectors; by hand:
    python3 guest/app/asgi/test_worker.py protocol/testdata/vectors.json
"""

import asyncio
import json
import os
import socket
import struct
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import worker  # noqa: E402

VECTORS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "protocol", "testdata", "vectors.json")

SCHEMA = {"HELLO": "hello", "GOAWAY": "goaway", "CONFIG_RESULT": "config_result", "LOG": "log",
          "REQUEST": "request", "RESPONSE": "response", "END": "end", "RESET": "reset",
          "WS_CLOSE": "ws_close"}
TYPES = {name: code for code, name in worker.TYPE_NAMES.items()}
FLAGS = {name: bit for bit, name in worker.FLAG_NAMES.items()}


def to_wire(schema, msg):
    """The vectors' JSON form of a message -> the worker's dict form."""
    out = {}
    for name, kind in worker.SCHEMAS[schema].values():
        if name not in msg:
            continue
        v = msg[name]
        if kind == "bytes":
            v = v.encode()
        elif kind == "list":
            v = [x.encode() for x in v]
        elif kind == "headers":
            v = [(n.encode(), x.encode()) for n, x in v]
        elif kind == "timeline":
            v = [{"phase": e["phase"].encode(), "boot_nano": e["boot_nano"]} for e in v]
        elif v is True:
            v = 1
        out[name] = v
    return out


def to_json(schema, msg):
    """The worker's decoded form -> the vectors' JSON form."""
    out = {}
    for name, kind in worker.SCHEMAS[schema].values():
        if name not in msg:
            continue
        v = msg[name]
        if kind == "bytes":
            v = v.decode()
        elif kind == "list":
            v = [x.decode() for x in v]
        elif kind == "headers":
            v = [[n.decode(), x.decode()] for n, x in v]
        elif kind == "timeline":
            v = [{"phase": e["phase"].decode(), "boot_nano": e["boot_nano"]} for e in v]
        elif name == "ok":
            v = bool(v)
        out[name] = v
    return out


class Reassembly(unittest.TestCase):
    """data_received must see the same frames however the bytes are cut;
    a DATA frame's payload reaches its stream as it arrives."""

    def frames_seen(self, chunks):
        import asyncio
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            seen = []

            class Sink:
                """A stream that records the DATA pieces it is handed."""

                def __init__(self, sid, entry):
                    self.id, self.entry = sid, entry

                def on_data(self, payload, fin):
                    self.entry[3] += payload

            class Recorder(worker.Session):
                def handle_frame(self, ftype, flags, sid, payload):
                    seen.append((ftype, flags, sid, bytes(payload)))

                def data_start(self, flags, sid, length):
                    entry = [worker.DATA, flags, sid, bytearray()]
                    seen.append(entry)
                    self.streams[sid] = Sink(sid, entry)
                    return self.streams[sid]

            session = Recorder(loop.create_future())
            session.peer = {}  # past the HELLO
            for chunk in chunks:
                session.data_received(chunk)
            frames = [tuple(f[:3]) + (bytes(f[3]),) for f in seen]
            return frames, bytes(session.rbuf[:session.rlen]), session.partial
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def test_any_split_gives_the_same_frames(self):
        want = [(worker.DATA, 0, 1, b"a" * 1000), (worker.PING, 0, 0, b"12345678"),
                (worker.DATA, worker.FIN, 3, b""), (worker.DATA, 0, 5, bytes(range(256)) * 200),
                (worker.PING, 0, 0, b"abcdefgh")]
        stream = b"".join(worker.frame(*f) for f in want)
        for size in (1, 3, 7, 10, 11, 4096, 65536, len(stream)):
            with self.subTest(chunk=size):
                chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
                seen, left, partial = self.frames_seen(chunks)
                self.assertEqual(seen, want)
                self.assertEqual(left, b"")
                self.assertIsNone(partial)
        # A frame other than DATA cut short stays buffered until the rest
        # arrives.
        seen, left, _ = self.frames_seen([stream[:-5]])
        self.assertEqual(seen, want[:-1])
        self.assertEqual(len(left), len(worker.frame(*want[-1])) - 5)
        # A DATA frame cut short: what arrived is handed on, the rest is
        # awaited.
        cut = len(worker.frame(*want[-1])) + 5
        seen, left, partial = self.frames_seen([stream[:-cut]])
        self.assertEqual(seen[:-1], want[:-2])
        self.assertEqual(seen[-1], want[-2][:3] + (want[-2][3][:-5],))
        self.assertEqual(left, b"")
        self.assertEqual(partial[2], 5)


class ResponseHeadSize(unittest.TestCase):
    """A response head larger than init accepts in one frame resets that
    stream only: it is never sent (init would drop the whole session)."""

    def frames_written(self, headers, websocket=False):
        import asyncio
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            written = bytearray()

            class Transport:
                def write(self, data):
                    written.extend(data)

            session = worker.Session(loop.create_future())
            session.transport = Transport()
            session.peer_max_frame, session.peer_window = worker.MIN_MAX_FRAME, 1 << 16
            st = session.streams[1] = worker.Stream(session, 1, {"kind": 1 if websocket else 0}, True)

            async def respond():
                if websocket:
                    await st.send({"type": "websocket.accept", "headers": headers})
                else:
                    await st.send({"type": "http.response.start", "status": 200, "headers": headers})
                    await st.send({"type": "http.response.body", "body": b"body"})
                await asyncio.sleep(0)  # the loop's scheduled flushes

            loop.run_until_complete(respond())
            session.flush()
            frames, pos = [], 0
            while pos < len(written):
                ftype, flags, sid, length = worker.HEADER.unpack_from(written, pos)
                frames.append((ftype, flags, sid, bytes(written[pos + 10:pos + 10 + length])))
                pos += 10 + length
            return frames
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def test_too_large_head_resets_the_stream(self):
        frames = self.frames_written([(b"x-big", b"b" * worker.MIN_MAX_FRAME)])
        self.assertEqual([(t, sid) for t, _, sid, _ in frames], [(worker.RESET, 1)])
        self.assertEqual(worker.decode("reset", frames[0][3])["code"], worker.APP_ERROR)

    def test_too_large_websocket_accept_resets_the_stream(self):
        frames = self.frames_written([(b"x-big", b"b" * worker.MIN_MAX_FRAME)], websocket=True)
        self.assertEqual([(t, sid) for t, _, sid, _ in frames], [(worker.RESET, 1)])

    def test_head_that_fits_is_sent(self):
        frames = self.frames_written([(b"x-fits", b"f" * (worker.MIN_MAX_FRAME - 100))])
        self.assertEqual([(t, fl, sid) for t, fl, sid, _ in frames], [(worker.RESPONSE, 0, 1), (worker.DATA, worker.FIN, 1)])
        self.assertEqual(frames[1][3], b"body")


class GoldenVectors(unittest.TestCase):
    def test_vectors(self):
        with open(VECTORS) as f:
            vectors = json.load(f)["vectors"]
        self.assertGreater(len(vectors), 15)
        for v in vectors:
            with self.subTest(v["name"]):
                want = bytes.fromhex(v["hex"])
                ftype, flags = TYPES[v["type"]], 0
                for name in v["flags"]:
                    flags |= FLAGS[name]
                schema = SCHEMA.get(v["type"])
                if schema and "message" in v:
                    payload = worker.encode(schema, to_wire(schema, v["message"]))
                else:
                    payload = bytes.fromhex(v.get("payload_hex", ""))
                # Encoding reproduces the bytes exactly.
                self.assertEqual(worker.frame(ftype, flags, v["stream"], payload).hex(), want.hex())
                # Decoding the bytes gives the meaning back.
                t, fl, sid, length = worker.HEADER.unpack_from(want)
                self.assertEqual((t, fl, sid, length), (ftype, flags, v["stream"], len(want) - 10))
                if schema and "message" in v:
                    self.assertEqual(to_json(schema, worker.decode(schema, want[10:])), v["message"])
                if schema == "response" and "message" in v:
                    # The hot-path encoder gives the same bytes.
                    m = to_wire(schema, v["message"])
                    fast = worker.encode_response(m["status"], m.get("headers", []), m.get("subprotocol", b""))
                    self.assertEqual(worker.frame(ftype, flags, v["stream"], fast).hex(), want.hex())

    def test_malformed_payloads_are_errors(self):
        for bad in (b"\x08", b"\x12\x05ab", b"\x00\x01", b"\x0b\x01", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"):
            with self.subTest(bad.hex()):
                with self.assertRaises(ValueError):
                    worker.decode("request", bad)
        with self.assertRaises(ValueError):  # odd number of header occurrences
            worker.decode("response", b"\x08\xc8\x01\x12\x01a")
        with self.assertRaises(ValueError):  # u32 out of range
            worker.decode("reset", b"\x08\x80\x80\x80\x80\x10")

    def test_fast_response_encoder_matches_encode(self):
        long_value = b"v" * 300  # a length that needs two varint bytes
        for status, headers in ((200, []), (404, [(b"content-type", b"text/plain")]), (999, [(b"x", long_value)] * 3)):
            with self.subTest(status=status):
                self.assertEqual(worker.encode_response(status, headers),
                                 worker.encode("response", {"status": status, "headers": headers}))
        # What an app sends (names in any case, buffers for bytes), as the
        # worker encodes it: header_pairs, then encode_response.
        app_headers = [(b"Content-Type", b"text/plain"), (bytearray(b"X-Long"), long_value),
                       (memoryview(b"x-" + b"n" * 200), bytearray(b"v")), (b"empty", b"")]
        pairs = worker.header_pairs(app_headers)
        self.assertEqual(pairs, [(b"content-type", b"text/plain"), (b"x-long", long_value),
                                 (b"x-" + b"n" * 200, b"v"), (b"empty", b"")])
        self.assertTrue(all(type(b) is bytes for pair in pairs for b in pair))
        self.assertEqual(worker.encode_response(201, pairs), worker.encode("response", {"status": 201, "headers": pairs}))
        for bad in ([(b"content-length", 5)], [("content-type", b"text/plain")], [(b"a", None)]):
            with self.subTest(bad=bad), self.assertRaises(TypeError):
                worker.header_pairs(bad)

    def test_fast_request_decoder_matches_decode(self):
        import random
        rng = random.Random(17)
        full = worker.encode("request", {
            "kind": 1, "http_version": b"1.1", "method": b"GET", "scheme": b"https", "path": b"/p",
            "raw_path": b"/p", "query_string": b"a=1", "root_path": b"/vm/x",
            "headers": [(b"host", b"h"), (b"x", b"")], "client_host": b"1.2.3.4", "client_port": 5,
            "server_host": b"s", "server_port": 80, "subprotocols": [b"chat", b"v2"]})
        cases = [full, b"", b"\x4a\x01a", b"\x08\x80\x80\x80\x80\x10", b"\x12\x05ab", b"\x10\x01", b"\x78\x05"]
        for _ in range(3000):  # mutations of a full head
            b = bytearray(full)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            cases.append(bytes(b[:rng.randrange(len(b) + 1)]))
        for payload in cases:
            try:
                want = worker.decode("request", payload)
            except ValueError:
                with self.assertRaises(ValueError, msg=payload.hex()):
                    worker.decode_request(payload)
                continue
            self.assertEqual(worker.decode_request(payload), want, payload.hex())

    def test_fast_request_decoder_gives_the_same_error_messages(self):
        # decode_request promises "the same errors" as decode("request"):
        # the message goes to init in the RESET ("bad REQUEST: ...").
        # decode reports a broken field anywhere before a field of the wrong
        # kind; the one-pass decoder reports whichever comes first.
        for payload in (b"\x0a\x00" + b"\x12\x05ab",   # kind as bytes, then a truncated field
                        b"\x48\x01" + b"\x0f",          # a header as a varint, then wire type 7
                        b"\x58\x80\x80\x80\x80\x10" + b"\x12\x80"):  # a port over 32 bits, then a cut length
            with self.subTest(payload.hex()):
                with self.assertRaises(ValueError) as want:
                    worker.decode("request", payload)
                with self.assertRaises(ValueError) as got:
                    worker.decode_request(payload)
                self.assertEqual(str(got.exception), str(want.exception))

    def test_unknown_fields_are_skipped(self):
        self.assertEqual(worker.decode("reset", b"\x08\x07\x78\x05\x12\x02hi"), {"code": 7, "message": b"hi"})


class FakeTransport:
    """What the worker writes toward init, kept for inspection."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False
        self.writes = 0

    def write(self, b):
        self.data += b
        self.writes += 1

    def writelines(self, parts):
        self.write(b"".join(parts))

    def get_extra_info(self, name, default=None):
        return default  # no socket: the session writes through write()

    def get_write_buffer_size(self):
        return 0

    def set_write_buffer_limits(self, high=None, low=None):
        pass  # (every write is kept at once: there is nothing to hold back)

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def frames(self):
        out, pos = [], 0
        while pos < len(self.data):
            t, fl, sid, length = worker.HEADER.unpack_from(self.data, pos)
            out.append((t, fl, sid, bytes(self.data[pos + 10:pos + 10 + length])))
            pos += 10 + length
        return out


# The HELLO init sends on a worker's channel.
HOST_HELLO = worker.frame(worker.HELLO, 0, 0, worker.encode("hello", {
    "version": worker.PROTOCOL_VERSION, "role": 1, "max_frame_size": 64 << 10,
    "initial_window": 256 << 10, "max_streams": 100}))


class LoopCase(unittest.TestCase):
    """A test with an event loop of its own, turned by hand."""

    def setUp(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.addCleanup(self.loop.close)
        self.addCleanup(asyncio.set_event_loop, None)

    def turn(self, n=20):
        for _ in range(n):
            self.loop.run_until_complete(asyncio.sleep(0))


class SessionCase(LoopCase):
    """One session after init's HELLO, writing to a FakeTransport."""

    def setUp(self):
        super().setUp()
        self.transport = FakeTransport()
        self.session = worker.Session(self.loop.create_future())
        self.session.connection_made(self.transport)
        self.session.data_received(HOST_HELLO)


class WebSocketFlow(SessionCase):
    """The worker's side of websockets, driven frame by frame as init would."""

    def open_websocket(self, app):
        self.session.app = app
        self.session.data_received(worker.frame(worker.REQUEST, 0, 1, worker.encode("request", {"kind": 1, "path": b"/ws"})))
        self.turn()

    def send_fragment(self, payload, more):
        self.session.data_received(worker.frame(worker.WS_MESSAGE, worker.MORE if more else 0, 1, payload))

    def sent(self, ftype):
        return [(fl, p) for t, fl, sid, p in self.transport.frames() if t == ftype and sid == 1]

    def credit_returned(self):
        return sum(struct.unpack(">I", p)[0] for _, p in self.sent(worker.WINDOW_UPDATE))

    def test_message_waits_for_receive_and_too_big_closes_1009(self):
        received, go = [], asyncio.Event()

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            await go.wait()
            received.append(await receive())

        self.addCleanup(setattr, worker, "MAX_WS_MESSAGE", worker.MAX_WS_MESSAGE)
        worker.MAX_WS_MESSAGE = 100 << 10
        self.open_websocket(app)
        for _ in range(3):
            self.send_fragment(b"x" * (64 << 10), True)
        self.turn()
        # The app has not asked: nothing is taken, no credit goes back.
        self.assertEqual(self.credit_returned(), 0)
        go.set()
        self.turn()
        self.assertEqual([(m["type"], m["code"]) for m in received], [("websocket.disconnect", 1009)])
        # The websocket is closed with 1009, not reset.
        closes = [worker.decode("ws_close", p) for _, p in self.sent(worker.WS_CLOSE)]
        self.assertEqual(closes, [{"code": 1009, "reason": b"message too big"}])
        resets = [worker.decode("reset", p).get("code", 0) for _, p in self.sent(worker.RESET)]
        self.assertNotIn(worker.BODY_TOO_LARGE, resets)
        # Everything received was given back: the peer is not held up.
        self.assertGreaterEqual(self.credit_returned(), 128 << 10)

    def test_after_the_apps_close_nothing_is_held(self):
        done = asyncio.Event()

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000, "reason": "bye"})
            await done.wait()

        self.open_websocket(app)
        # Parts of a message the app will never receive: their credit goes
        # back at once, so init's relay toward the worker is not held up.
        for _ in range(4):
            self.send_fragment(b"y" * (60 << 10), True)
        self.turn()
        self.assertGreaterEqual(self.credit_returned(), 128 << 10)
        # The app returns before init closed its side: RESET NO_ERROR
        # after the WS_CLOSE tells it to stop sending.
        done.set()
        self.turn()
        kinds = [t for t, fl, sid, p in self.transport.frames() if sid == 1 and t in (worker.WS_CLOSE, worker.RESET)]
        self.assertEqual(kinds, [worker.WS_CLOSE, worker.RESET])
        self.assertEqual(worker.decode("reset", self.sent(worker.RESET)[0][1]).get("code", 0), worker.NO_ERROR)

    def test_a_long_close_reason_is_cut_not_sent_whole(self):
        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            # 200 characters of 3 bytes each: far over a frame's close reason.
            await send({"type": "websocket.close", "code": 4000, "reason": "\u20ac" * 200})

        self.open_websocket(app)
        closes = [worker.decode("ws_close", p) for _, p in self.sent(worker.WS_CLOSE)]
        self.assertEqual(len(closes), 1)
        self.assertEqual(closes[0]["code"], 4000)
        # Cut to at most 123 bytes on a character boundary (41 euro signs).
        self.assertEqual(closes[0]["reason"].decode("utf-8"), "\u20ac" * 41)


    def test_a_denial_must_start_before_its_body_and_be_a_final_status(self):
        for messages in ([{"type": "websocket.http.response.body", "body": b"no"}],
                         [{"type": "websocket.accept"}, {"type": "websocket.http.response.body", "body": b"no"}],
                         [{"type": "websocket.http.response.start", "status": 101, "headers": []}],
                         [{"type": "websocket.http.response.start", "status": 0, "headers": []}]):
            with self.subTest(messages=messages):
                raised = []

                async def app(scope, receive, send):
                    await receive()
                    try:
                        for m in messages:
                            await send(m)
                    except RuntimeError as e:
                        raised.append(e)

                self.transport.data.clear()
                self.session.last_peer_id = 0
                self.open_websocket(app)
                self.assertEqual(len(raised), 1)
                self.assertEqual(self.sent(worker.DATA), [])
                heads = [worker.decode("response", p)["status"] for _, p in self.sent(worker.RESPONSE)]
                self.assertEqual(heads, [101] if messages[0]["type"] == "websocket.accept" else [])

    def test_close_codes_that_may_not_be_sent_are_the_apps_error(self):
        for code in (70000, -1, 1006, 1015, 2000):
            with self.subTest(code=code):
                raised = []

                async def app(scope, receive, send):
                    await receive()
                    await send({"type": "websocket.accept"})
                    try:
                        await send({"type": "websocket.close", "code": code})
                    except RuntimeError as e:
                        raised.append(e)
                    await send({"type": "websocket.close", "code": 1000})

                self.transport.data.clear()
                self.session.last_peer_id = 0
                self.open_websocket(app)
                self.assertEqual(len(raised), 1)
                closes = [worker.decode("ws_close", p).get("code") for _, p in self.sent(worker.WS_CLOSE)]
                self.assertEqual(closes, [1000])

    def test_a_denial_may_close_with_any_code(self):
        # Before accept a close is a denial (the client gets 403): apps
        # deny with close(code=403), which uvicorn and hypercorn take.
        for code in (403, 1006, 70000):
            with self.subTest(code=code):
                raised = []

                async def app(scope, receive, send):
                    await receive()
                    try:
                        await send({"type": "websocket.close", "code": code})
                    except RuntimeError as e:
                        raised.append(e)

                self.transport.data.clear()
                self.session.last_peer_id = 0
                self.open_websocket(app)
                self.assertEqual(raised, [])
                self.assertEqual(self.sent(worker.RESPONSE), [])
                closes = [worker.decode("ws_close", p).get("code") for _, p in self.sent(worker.WS_CLOSE)]
                self.assertEqual(closes, [1000])

    def test_nothing_is_sent_after_this_sides_close(self):
        # The peer closes while a big message waits for window: the worker
        # answers with its own close, and the send ends there (an error to
        # the app), with no WS_MESSAGE after the close.
        raised = []

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            try:
                await send({"type": "websocket.send", "bytes": b"z" * (1 << 20)})
            except worker.ConnectionClosed as e:
                raised.append(e)

        self.open_websocket(app)
        self.session.data_received(worker.frame(worker.WS_CLOSE, worker.FIN, 1, worker.encode("ws_close", {"code": 1000})))
        self.session.data_received(worker.frame(worker.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20)))
        self.turn()
        self.assertEqual(len(raised), 1)
        kinds = [t for t, fl, sid, p in self.transport.frames() if sid == 1 and t in (worker.WS_MESSAGE, worker.WS_CLOSE)]
        self.assertEqual(kinds[-1], worker.WS_CLOSE)

    def test_a_message_in_many_fragments_is_held_as_its_bytes(self):
        # Empty fragments and one-byte ones take no memory of their own:
        # the message is gathered in one buffer.
        received = []

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            received.append(await receive())

        self.open_websocket(app)
        for i in range(3000):
            self.send_fragment(b"" if i % 2 else b"a", True)
        self.turn()
        st = self.session.streams[1]
        self.assertIsInstance(st.ws_partial, bytearray)
        self.assertEqual(len(st.ws_partial), 1500)
        self.send_fragment(b"!", False)
        self.turn()
        self.assertEqual(received, [{"type": "websocket.receive", "bytes": b"a" * 1500 + b"!"}])


class HttpFlow(SessionCase):
    """The worker's side of an http request: when its answer goes out, as
    the app's steps end (drive)."""

    def setUp(self):
        super().setUp()
        self.turn()
        self.transport.data.clear()
        self.transport.writes = 0

    def request(self, app):
        self.session.app = app
        self.session.data_received(worker.frame(worker.REQUEST, worker.FIN, 1, worker.encode("request", {"path": b"/"})))

    def sent(self):
        return [(t, fl) for t, fl, sid, p in self.transport.frames() if sid == 1]

    def test_an_answer_that_never_waits_leaves_no_turn_of_the_loop_behind(self):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"hi"})

        self.request(app)
        # One step of the loop runs the app's task: the answer is written
        # by then, in one write, and no flush waits for the next turn
        # (which cost a turn of the loop per request).
        self.loop.run_until_complete(asyncio.sleep(0))
        self.assertEqual(self.sent(), [(worker.RESPONSE, 0), (worker.DATA, worker.FIN)])
        self.assertEqual(self.transport.writes, 1)
        self.assertFalse(self.session.flush_scheduled)
        self.assertEqual(self.transport.frames()[1][3], b"hi")

    def test_a_finished_answer_does_not_wait_for_a_paused_channel(self):
        # Under sustained load the channel toward init may stay over its
        # high-water mark for a long time. Answers that are complete must
        # not wait for it to drain: init has them whole, and streams
        # waiting so once filled MY_MAX_STREAMS, and new requests were
        # refused though only a few were in progress.
        self.addCleanup(setattr, worker, "MY_MAX_STREAMS", worker.MY_MAX_STREAMS)
        worker.MY_MAX_STREAMS = 4
        streamed = asyncio.Event()

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if scope["path"] == "/stream":
                await send({"type": "http.response.body", "body": b"part", "more_body": True})
                streamed.set()
            await send({"type": "http.response.body", "body": b"x" * 1000})

        self.session.app = app
        self.session.pause_writing()
        for i in range(10):
            self.session.data_received(worker.frame(worker.REQUEST, worker.FIN, 2 * i + 1, worker.encode("request", {"path": b"/"})))
            self.turn(2)
        ends = [sid for t, fl, sid, p in self.transport.frames() if t == worker.DATA and fl & worker.FIN]
        self.assertEqual(ends, [2 * i + 1 for i in range(10)])
        self.assertEqual([sid for t, fl, sid, p in self.transport.frames() if t == worker.RESET], [])
        self.assertEqual(self.session.streams, {})
        # An app that goes on sending still waits for the channel to drain.
        self.session.data_received(worker.frame(worker.REQUEST, worker.FIN, 21, worker.encode("request", {"path": b"/stream"})))
        self.turn()
        self.assertFalse(streamed.is_set())
        self.assertIn(21, self.session.streams)
        self.session.resume_writing()
        self.turn()
        self.assertTrue(streamed.is_set())
        self.assertEqual(self.session.streams, {})

    def test_headers_and_bodies_that_are_not_bytes_are_the_apps_error(self):
        # bytes(5) is five NUL bytes: a Content-Length given as an int
        # must raise in the app (a 500, as uvicorn answers), not go out as
        # a header of NULs (or allocate 200 MB for len(body) mistaken).
        for headers, body in (([(b"content-length", 5)], b"hello"), ([(b"content-length", 200_000_000)], b""),
                              ({b"ab": b"cd"}, b"x"), ([(b"content-type", b"text/plain")], 7)):
            with self.subTest(headers=headers, body=body):
                raised = []

                async def app(scope, receive, send):
                    try:
                        await send({"type": "http.response.start", "status": 200, "headers": headers})
                        await send({"type": "http.response.body", "body": body})
                    except (TypeError, ValueError) as e:
                        raised.append(e)
                        raise

                self.transport.data.clear()
                self.session.last_peer_id = 0
                self.request(app)
                self.turn()
                self.assertEqual(len(raised), 1)
                frames = [(t, p) for t, fl, sid, p in self.transport.frames() if sid == 1]
                heads = [worker.decode("response", p) for t, p in frames if t == worker.RESPONSE]
                if isinstance(body, int):  # the response had started: the stream is reset
                    self.assertIn(worker.RESET, [t for t, p in frames])
                    self.assertNotIn(worker.DATA, [t for t, p in frames])
                else:
                    self.assertEqual([h["status"] for h in heads], [500])
                for h in heads:
                    self.assertNotIn(b"\0", b"".join(v for n, v in h.get("headers", [])))

    def test_an_app_waiting_for_a_paused_channel_wakes_when_the_channel_is_lost(self):
        returned = []

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            try:
                await send({"type": "http.response.body", "body": b"more", "more_body": True})
            finally:
                returned.append(True)

        self.session.pause_writing()
        self.request(app)
        self.turn()
        self.assertEqual(returned, [])  # waits for the channel to drain
        self.session.connection_lost(None)
        self.turn()
        self.assertEqual(returned, [True])
        self.assertEqual(self.session.worker.tasks, set())

    def test_a_frame_only_the_worker_sends_resets_the_stream(self):
        go = asyncio.Event()

        async def app(scope, receive, send):
            await go.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"late"})

        self.request(app)
        self.turn()
        self.session.data_received(worker.frame(worker.RESPONSE, 0, 1, worker.encode("response", {"status": 200})))
        go.set()
        self.turn()
        frames = [(t, p) for t, fl, sid, p in self.transport.frames() if sid == 1]
        self.assertEqual([t for t, p in frames], [worker.RESET])
        self.assertEqual(worker.decode("reset", frames[0][1])["code"], worker.PROTOCOL_ERROR)

    def test_the_lifespan_shutdown_waits_for_apps_whose_stream_was_reset(self):
        events, release = [], asyncio.Event()

        async def app(scope, receive, send):
            await release.wait()  # ignores the disconnect, still uses what the lifespan holds
            events.append("app done")

        class Lifespan:
            async def shutdown(self):
                events.append("lifespan shutdown")

        self.request(app)
        self.turn()
        self.session.data_received(worker.frame(worker.RESET, 0, 1, worker.encode("reset", {"code": worker.CANCEL})))
        self.assertEqual(self.session.streams, {})
        self.session.worker.lifespan = Lifespan()
        shutdown = self.loop.create_task(self.session.shutdown("test"))
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0.02))
        self.assertEqual(events, [])
        release.set()
        self.loop.run_until_complete(shutdown)
        self.assertEqual(events, ["app done", "lifespan shutdown"])

    def test_a_head_goes_out_alone_when_the_app_waits_before_its_body(self):
        go, resumed = asyncio.Event(), []

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await go.wait()
            resumed.append(True)
            await send({"type": "http.response.body", "body": b"late"})

        self.request(app)
        self.turn()
        self.assertEqual(resumed, [])
        self.assertEqual(self.sent(), [(worker.RESPONSE, 0)])
        go.set()
        self.turn()
        self.assertEqual(self.sent(), [(worker.RESPONSE, 0), (worker.DATA, worker.FIN)])

    def test_what_the_app_awaits_gets_its_value_and_its_exceptions(self):
        seen = []

        async def answer():
            await asyncio.sleep(0)
            return 41

        async def fail():
            await asyncio.sleep(0)
            raise KeyError("k")

        async def app(scope, receive, send):
            seen.append(await answer() + 1)
            try:
                await fail()
            except KeyError as e:
                seen.append(e.args[0])
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        self.request(app)
        self.turn()
        self.assertEqual(seen, [42, "k"])
        # As when init resets the stream and the worker then stops.
        st = self.session.streams[1]
        self.session.data_received(worker.frame(worker.RESET, 0, 1, worker.encode("reset", {"code": worker.CANCEL})))
        st.task.cancel()
        self.turn()
        self.assertEqual(seen, [42, "k", "cancelled"])
        self.assertTrue(st.task.done())
        self.assertFalse(self.session.in_app)

    def test_an_app_may_return_any_awaitable(self):
        class Answer:
            """Not a coroutine: an object with __await__, as some
            compiled or hand-written apps return."""

            def __init__(self, send):
                self.send = send

            def __await__(self):
                yield from asyncio.sleep(0).__await__()
                yield from self.send({"type": "http.response.start", "status": 204, "headers": []}).__await__()
                yield from self.send({"type": "http.response.body", "body": b""}).__await__()

        self.request(lambda scope, receive, send: Answer(send))
        self.turn()
        self.assertEqual(self.sent(), [(worker.RESPONSE, worker.FIN)])
        self.assertEqual(worker.decode("response", self.transport.frames()[0][3])["status"], 204)

    def test_an_app_may_be_a_generator_based_coroutine(self):
        # `await` takes a generator-based coroutine (types.coroutine), which
        # has no __await__; the worker before drive served such an app.
        import types

        @types.coroutine
        def app(scope, receive, send):
            yield from send({"type": "http.response.start", "status": 200, "headers": []})
            yield from send({"type": "http.response.body", "body": b"gen"})

        self.request(app)
        self.turn()
        heads = [worker.decode("response", p) for t, fl, sid, p in self.transport.frames() if t == worker.RESPONSE]
        self.assertEqual([h["status"] for h in heads], [200])
        self.assertFalse(getattr(self.session, "in_app", False))

    def test_an_app_may_return_an_awaitable_whose_iterator_has_no_send(self):
        # __await__ must return an iterator, nothing more: `await` (like
        # yield from) drives one that has __next__ alone, as a hand-written
        # awaitable may return; the worker before drive served it.
        class Steps:
            def __init__(self, coro):
                self.coro = coro

            def __iter__(self):
                return self

            def __next__(self):
                return self.coro.send(None)

        async def respond(send):
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b""})

        class Answer:
            def __init__(self, send):
                self.send = send

            def __await__(self):
                return Steps(respond(self.send))

        self.request(lambda scope, receive, send: Answer(send))
        self.turn()
        heads = [worker.decode("response", p) for t, fl, sid, p in self.transport.frames() if t == worker.RESPONSE]
        self.assertEqual([h["status"] for h in heads], [204])

    def test_an_app_that_returns_no_awaitable_is_answered_500(self):
        self.request(lambda scope, receive, send: None)
        self.turn()
        heads = [worker.decode("response", p) for t, fl, sid, p in self.transport.frames() if t == worker.RESPONSE]
        self.assertEqual([h["status"] for h in heads], [500])
        self.assertFalse(self.session.in_app)


class OverARealSocket(unittest.TestCase):
    """A worker's session over a real socket and uvloop, the loop the
    worker runs on, the host's end of the socket in the test's hands."""

    def setUp(self):
        try:
            import uvloop
        except ImportError:
            self.skipTest("python3-uvloop is not installed (the worker's loop when it is)")
        self.ours, self.host = socket.socketpair()
        self.addCleanup(self.host.close)
        self.loop = uvloop.new_event_loop()
        self.addCleanup(self.loop.close)

    def host_has_bytes(self):
        try:
            return len(self.host.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) > 0
        except BlockingIOError:
            return False

    def serve(self, app, requests, done):
        """Runs app in a session, sends it requests REQUEST frames (paths
        /1, /2, ...) in one write, waits until done() and no stream is
        left, and returns what the worker wrote after its HELLO."""
        async def run():
            session = worker.Session(self.loop.create_future())
            session.app = app
            await self.loop.connect_accepted_socket(lambda: session, self.ours)
            self.host.sendall(HOST_HELLO)
            while session.peer is None:
                await asyncio.sleep(0.01)
            while self.host_has_bytes():
                self.host.recv(1 << 16)  # the worker's HELLO
            # Every request in one write: the worker reads them in one
            # batch, and its loop runs all their apps in one turn.
            self.host.sendall(b"".join(worker.frame(worker.REQUEST, worker.FIN, 2 * i + 1, worker.encode(
                "request", {"path": b"/%d" % (i + 1)})) for i in range(requests)))
            while session.streams or not done():
                await asyncio.sleep(0.01)
            got = b""
            while self.host_has_bytes():
                got += self.host.recv(1 << 16)
            session.transport.close()
            return got

        return self.loop.run_until_complete(asyncio.wait_for(run(), 30))


class AnswersOfABatch(OverARealSocket):
    """The answers to requests read in one batch start to leave before the
    batch is done, so that the host can turn them round while the rest
    run."""

    def test_answers_leave_before_the_last_request_of_a_batch_runs(self):
        requests = 32
        seen_at_last = []

        async def app(scope, receive, send):
            if scope["path"] == "/%d" % requests:
                seen_at_last.append(self.host_has_bytes())
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b"x" * 200})

        self.serve(app, requests, lambda: seen_at_last)
        # About 250 bytes an answer: past WRITE_AT (4 KiB) after 17 of
        # them. With uvloop's default mark (64 KiB), all 32 left together
        # at the end of the turn.
        self.assertEqual(seen_at_last, [True])


class AnAnswerAlone(OverARealSocket):
    """An answer with no other request in flight is on the socket as soon
    as the app has sent it, before the app has unwound (the code after its
    last send: middleware, the teardown of FastAPI's dependencies with
    yield); answers of a batch still share their writes."""

    def answers_on_the_socket_when_sent(self, requests):
        seen = []

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"hello"})
            seen.append(self.host_has_bytes())  # still in the step that sent it

        got = self.serve(app, requests, lambda: len(seen) >= requests)
        self.assertEqual(got.count(b"hello"), requests)
        return seen

    def test_an_answer_alone_leaves_before_the_app_returns(self):
        self.assertEqual(self.answers_on_the_socket_when_sent(1), [True])

    def test_answers_of_a_batch_share_a_write(self):
        # Two requests read together: neither answer is written alone.
        self.assertEqual(self.answers_on_the_socket_when_sent(2), [False, False])


def shared_memfd(out_size, in_size):
    """A shared buffer as the host makes one: its rings' sizes in the
    control area."""
    fd = os.memfd_create("test-shared")
    os.ftruncate(fd, worker.SHARED_HEADER + out_size + in_size)
    os.pwrite(fd, worker.SHARED_SIZES.pack(out_size, in_size), 16)
    return fd


class SharedSessionCase(SessionCase):
    """A session that holds a shared buffer of the host's."""

    def give_buffer(self, out_size, in_size):
        fd = shared_memfd(out_size, in_size)
        self.addCleanup(os.close, fd)
        self.session.shared = worker.SharedBuffer(fd)
        self.mem = self.session.shared.mem
        self.turn()
        self.transport.data.clear()


class SharedBody(SharedSessionCase):
    """A big answer through the host's shared buffer (SPEC.md 11.1): the
    bytes are copied into it and DATA_SHARED frames name them; what does
    not fit goes in DATA frames, and nothing waits for room."""

    def setUp(self):
        super().setUp()
        self.give_buffer(512 << 10, 256 << 10)
        self.session.peer_max_frame = 256 << 10  # as the host announces on a data channel

    def release(self, pos):
        worker.SHARED_WORD.pack_into(self.mem, 0, pos)

    def answer(self, sid, body):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        self.session.app = app
        self.session.data_received(worker.frame(worker.REQUEST, worker.FIN, sid, worker.encode("request", {"path": b"/"})))
        self.turn()

    def body_of(self, sid):
        """The body the host gets on stream sid, and its frame types."""
        body, kinds = b"", []
        for t, fl, s, payload in self.transport.frames():
            if s != sid or t not in (worker.DATA, worker.DATA_SHARED):
                continue
            kinds.append(t)
            if t == worker.DATA_SHARED:
                pos, n = worker.SHARED_REF.unpack(payload)
                off = pos % (512 << 10)
                body += self.mem[worker.SHARED_HEADER + off:worker.SHARED_HEADER + off + n]
            else:
                body += payload
        return body, kinds

    def test_a_big_body_goes_through_the_buffer_and_a_small_one_inline(self):
        big = bytes(range(256)) * 800  # 200 KiB
        self.answer(1, big)
        self.answer(3, b"small")
        self.assertEqual(self.body_of(1), (big, [worker.DATA_SHARED]))
        self.assertEqual(self.body_of(3), (b"small", [worker.DATA]))

    def test_a_full_buffer_falls_back_to_data_frames_and_wraps_once_released(self):
        first, second = b"a" * (200 << 10), b"b" * (200 << 10)
        self.answer(1, first)
        self.answer(3, second)
        self.answer(5, b"c" * (200 << 10))  # 600 KiB in a 512 KiB ring, nothing released
        self.assertEqual(self.body_of(1), (first, [worker.DATA_SHARED]))
        self.assertEqual(self.body_of(3), (second, [worker.DATA_SHARED]))
        self.assertEqual(self.body_of(5)[1][0], worker.DATA)
        self.assertEqual(self.body_of(5)[0], b"c" * (200 << 10))
        # The host releases the first: the next piece does not fit before
        # the ring's end (112 KiB left there), so it starts at its start.
        self.release(200 << 10)
        self.transport.data.clear()
        fourth = b"d" * (150 << 10)
        self.answer(7, fourth)
        (t, _, _, payload), = [f for f in self.transport.frames() if f[2] == 7 and f[0] in (worker.DATA, worker.DATA_SHARED)]
        self.assertEqual(t, worker.DATA_SHARED)
        self.assertEqual(worker.SHARED_REF.unpack(payload), (512 << 10, 150 << 10))
        self.assertEqual(self.body_of(7)[0], fourth)


class SharedRequestBody(SharedSessionCase):
    """Request body pieces the host sends through the request ring: copied
    out as their frames come, and released."""

    def setUp(self):
        super().setUp()
        self.give_buffer(256 << 10, 256 << 10)

    def put(self, pos, data):
        at = worker.SHARED_HEADER + (256 << 10) + pos % (256 << 10)
        self.mem[at:at + len(data)] = data
        return worker.SHARED_REF.pack(pos, len(data))

    def test_pieces_reach_the_app_and_are_released(self):
        got = []

        async def app(scope, receive, send):
            while True:
                m = await receive()
                got.append(m["body"])
                if not m.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"%d" % sum(map(len, got))})

        self.session.app = app
        first, second = b"x" * (40 << 10), b"y" * (30 << 10)
        self.session.data_received(worker.frame(worker.REQUEST, 0, 1, worker.encode("request", {"path": b"/"}))
                                   + worker.frame(worker.DATA_SHARED, 0, 1, self.put(0, first)))
        # Released as soon as it is copied out, before the app has it.
        self.assertEqual(worker.SHARED_WORD.unpack_from(self.mem, 8)[0], 40 << 10)
        self.put(0, b"z" * (40 << 10))  # the host may reuse it now: the app's bytes stay
        # The next one wraps to the ring's start (the position says so).
        self.session.data_received(worker.frame(worker.DATA_SHARED, worker.FIN, 1, self.put(256 << 10, second)))
        self.turn()
        self.assertEqual(b"".join(got), first + second)
        self.assertEqual(worker.SHARED_WORD.unpack_from(self.mem, 8)[0], (256 << 10) + (30 << 10))

    def test_a_piece_outside_the_ring_is_a_protocol_error(self):
        self.session.app = None
        self.session.data_received(worker.frame(worker.REQUEST, 0, 1, worker.encode("request", {"path": b"/"}))
                                   + worker.frame(worker.DATA_SHARED, 0, 1, worker.SHARED_REF.pack((256 << 10) - 10, 20)))
        self.assertTrue(self.session.closed)
        self.assertEqual(self.transport.frames()[-1][0], worker.GOAWAY)


class SharedBufferFromTheHost(unittest.TestCase):
    """The worker takes the buffer's descriptor sent with the host's HELLO,
    without taking the HELLO's bytes, and works without one."""

    def take(self, send):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        send(a)
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        shared = loop.run_until_complete(worker.take_shared(b))
        b.setblocking(True)
        return shared, b.recv(len(HOST_HELLO))

    def test_a_descriptor_with_the_hello(self):
        fd = shared_memfd(1 << 20, 1 << 20)
        self.addCleanup(os.close, fd)
        shared, hello = self.take(lambda a: a.sendmsg([HOST_HELLO], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]))
        self.assertIsNotNone(shared)
        self.assertEqual((shared.out_size, shared.in_size), (1 << 20, 1 << 20))
        self.assertEqual(hello, HOST_HELLO)

    def test_the_worker_says_in_its_hello_that_it_took_it(self):
        fd = shared_memfd(1 << 20, 1 << 20)
        self.addCleanup(os.close, fd)
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        asyncio.set_event_loop(loop)
        self.addCleanup(asyncio.set_event_loop, None)
        for shared in (worker.SharedBuffer(fd), None):
            transport = FakeTransport()
            worker.Session(loop.create_future(), data=True, shared=shared).connection_made(transport)
            (t, _, _, payload), = transport.frames()
            self.assertEqual(t, worker.HELLO)
            self.assertEqual(worker.decode("hello", payload).get("shared_buffer"), 1 if shared else None)

    def test_a_descriptor_that_comes_late(self):
        # The host gets the channel only once the worker has answered its
        # CONFIG (an app may take minutes to import): no time limit.
        fd = shared_memfd(1 << 20, 1 << 20)
        self.addCleanup(os.close, fd)

        def later(a):
            threading.Timer(0.3, a.sendmsg, ([HOST_HELLO], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])).start()

        shared, hello = self.take(later)
        self.assertIsNotNone(shared)
        self.assertEqual(hello, HOST_HELLO)

    def test_no_descriptor(self):
        shared, hello = self.take(lambda a: a.sendall(HOST_HELLO))
        self.assertIsNone(shared)
        self.assertEqual(hello, HOST_HELLO)

    def test_a_buffer_too_small_for_its_rings_is_not_used(self):
        fd = shared_memfd(1 << 20, 1 << 20)
        self.addCleanup(os.close, fd)
        os.ftruncate(fd, 1 << 20)
        shared, hello = self.take(lambda a: a.sendmsg([HOST_HELLO], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]))
        self.assertIsNone(shared)
        self.assertEqual(hello, HOST_HELLO)


class HeapThresholds(unittest.TestCase):
    """tune_malloc sets glibc's two thresholds unless the program's own
    GLIBC_TUNABLES does (TestUploadsReuseTheWorkersMemory, in Go, measures
    what they bring to a real worker)."""

    def setUp(self):
        import ctypes
        try:
            ctypes.CDLL(None).mallopt
        except AttributeError:
            self.skipTest("this C library has no mallopt")
        import platform
        if platform.libc_ver()[0] != "glibc":
            self.skipTest("not glibc: its mallopt may refuse the thresholds")

    def test_both_are_set_by_default(self):
        self.assertEqual(worker.tune_malloc({}), ["mmap_threshold", "trim_threshold"])

    def test_the_programs_own_tunables_win(self):
        self.assertEqual(worker.tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=65536"}), ["mmap_threshold"])
        both = "glibc.malloc.mmap_threshold=4096:glibc.malloc.trim_threshold=65536"
        self.assertEqual(worker.tune_malloc({"GLIBC_TUNABLES": both}), [])


class LifespanMessages(LoopCase):
    """What the worker says of a lifespan that goes wrong."""

    def run_startup(self, app, mode):
        import contextlib
        import io
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            lifespan = worker.Lifespan(app)
            try:
                self.loop.run_until_complete(lifespan.startup(mode))
                failure = None
            except worker.AppLoadError as e:
                failure = e
            self.turn()
        return lifespan, failure, err.getvalue()

    def test_an_answer_the_spec_does_not_allow_is_named(self):
        async def app(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.done"})
            await receive()

        _, failure, _ = self.run_startup(app, "on")
        self.assertIn("lifespan.startup.done", failure.message)
        self.assertNotIn("does not support", failure.message)
        lifespan, failure, said = self.run_startup(app, "auto")
        self.assertIsNone(failure)
        self.assertFalse(lifespan.supported)
        self.assertIn("lifespan.startup.done", said)

    def test_a_lifespan_that_raises_after_startup_is_logged_at_once(self):
        async def app(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await asyncio.sleep(0)
            raise RuntimeError("background job died")

        lifespan, failure, said = self.run_startup(app, "on")
        self.assertIsNone(failure)
        self.assertIn("background job died", said)
        self.assertIn("after startup", said)


class DataChannel(LoopCase):
    """A worker's data channel (SPEC.md section 11) serves the host's
    streams with the app its control channel configured, takes no CONFIG,
    says GOAWAY when init stops the worker, and its loss ends only its own
    streams."""

    def setUp(self):
        super().setUp()
        self.done = self.loop.create_future()
        self.control_out, self.data_out = FakeTransport(), FakeTransport()
        self.control = worker.Session(self.done)
        self.control.connection_made(self.control_out)
        self.data = worker.Session(self.done, worker=self.control.worker, data=True)
        self.data.connection_made(self.data_out)
        for s in (self.control, self.data):
            s.data_received(HOST_HELLO)

    def test_serves_with_the_shared_app_and_refuses_config(self):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        self.control.app = app
        self.data.data_received(worker.frame(worker.CONFIG, 0, 0, b"{}"))
        self.data.data_received(worker.frame(worker.REQUEST, worker.FIN, 1, worker.encode("request", {"path": b"/"})))
        self.turn()
        frames = self.data_out.frames()
        results = [worker.decode("config_result", p) for t, fl, sid, p in frames if t == worker.CONFIG_RESULT]
        self.assertEqual(len(results), 1)
        self.assertFalse(results[0].get("ok"))
        self.assertIn([worker.RESPONSE, worker.DATA], [[t for t, fl, sid, p in frames if sid == 1][:2]])
        self.assertIsNone(self.control.config_task)

    def test_init_goaway_says_goaway_on_the_data_channel_and_its_loss_is_not_the_end(self):
        self.data.connection_lost(None)
        self.assertFalse(self.done.done())
        self.control.data_received(worker.frame(worker.GOAWAY, 0, 0, worker.encode("goaway", {"code": 0})))
        self.turn()
        self.assertTrue(self.done.done())

    def test_goaway_reaches_the_host_first(self):
        async def app(scope, receive, send):
            pass

        self.control.app = app  # configured: a refusal below is for stopping
        self.control.data_received(worker.frame(worker.GOAWAY, 0, 0, worker.encode("goaway", {"code": 0})))
        self.turn()
        self.assertIn(worker.GOAWAY, [t for t, fl, sid, p in self.data_out.frames()])
        self.assertTrue(self.done.done())
        # Nothing new is taken on the data channel.
        self.data.data_received(worker.frame(worker.REQUEST, worker.FIN, 1, worker.encode("request", {"path": b"/"})))
        self.turn()
        resets = [worker.decode("reset", p) for t, fl, sid, p in self.data_out.frames() if t == worker.RESET and sid == 1]
        self.assertEqual([r.get("code") for r in resets], [worker.REFUSED_STREAM])


class SendBuffer(unittest.TestCase):
    def test_the_data_channel_can_take_a_whole_window_in_one_write(self):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        worker.widen_send_buffer(a)
        # Linux doubles what is asked for (its bookkeeping), capped by
        # net.core.wmem_max unless forced (CAP_NET_ADMIN: root here).
        want = worker.SEND_BUFFER
        if os.geteuid() != 0:
            with open("/proc/sys/net/core/wmem_max") as f:
                want = min(want, int(f.read()))
        self.assertEqual(a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), 2 * want)
        if want < worker.SEND_BUFFER:
            self.skipTest("net.core.wmem_max caps the buffer at %d bytes (checked); not root, so not forced" % want)
        # What a whole window (256 KiB, the host's) takes: one write.
        window = b"x" * (256 << 10)
        a.setblocking(False)
        self.assertEqual(a.send(window), len(window))


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
