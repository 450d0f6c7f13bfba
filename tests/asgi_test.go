package tests

import (
	"context"
	"testing"
	"time"
)

const fastapiApp = `
import os
from fastapi import FastAPI

app = FastAPI()

@app.get("/items/{item_id}")
async def item(item_id: int, q: str = ""):
    return {"item_id": item_id, "q": q, "pid": os.getpid()}

@app.post("/echo")
async def echo(payload: dict):
    return {"got": payload}
`

func TestFastAPIJSONRoute(t *testing.T) {
	requirePythonModules(t, "fastapi")
	code := writeApp(t, map[string]string{"main.py": fastapiApp})
	d := startDevInit(t)
	d.mustConfigure(t, asgiConfig(code, "main:app", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := request(ctx, d.sess, "GET", "/items/42?q=ferry", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := jsonBody(t, r)
	if r.status != 200 || got["item_id"] != float64(42) || got["q"] != "ferry" || r.headers["content-type"] != "application/json" {
		t.Fatalf("GET answered %d %v %v", r.status, r.headers, got)
	}
	r, err = request(ctx, d.sess, "POST", "/echo", map[string]string{"content-type": "application/json"}, []byte(`{"a": [1, 2]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonBody(t, r); r.status != 200 || got["got"].(map[string]any)["a"].([]any)[1] != float64(2) {
		t.Fatalf("POST answered %d %v", r.status, got)
	}
	r, err = request(ctx, d.sess, "GET", "/items/notanumber", nil, nil)
	if err != nil || r.status != 422 {
		t.Fatalf("validation error answered %v %v", r, err)
	}
}
