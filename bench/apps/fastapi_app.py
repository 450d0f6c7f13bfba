"""The FastAPI app of the benchmark: one JSON route with a path parameter,
a query parameter and a response model."""

from typing import List

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    id: int
    name: str
    q: str = ""
    tags: List[str] = []
    price: float


@app.get("/items/{item_id}", response_model=Item)
async def read_item(item_id: int, q: str = ""):
    return Item(id=item_id, name="widget", q=q, tags=["blue", "small"], price=9.5)
