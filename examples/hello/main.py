"""The example program of `make demo`: a FastAPI app with a JSON route,
a streaming route and a websocket echo."""

import asyncio
import os
import platform

from fastapi import FastAPI, WebSocket
from fastapi.responses import StreamingResponse

app = FastAPI(title="Ferry hello")


@app.get("/")
async def hello():
    return {"message": "Hello from Ferry", "python": platform.python_version(), "pid": os.getpid()}


@app.get("/stream")
async def stream(n: int = 5):
    async def ticks():
        for i in range(n):
            yield f"tick {i}\n"
            await asyncio.sleep(0.2)
    return StreamingResponse(ticks(), media_type="text/plain")


@app.websocket("/ws")
async def echo(ws: WebSocket):
    await ws.accept()
    async for text in ws.iter_text():
        await ws.send_text(f"echo: {text}")
