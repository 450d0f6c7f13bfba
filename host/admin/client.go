package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Client calls the admin API.
type Client struct {
	Addr  string // unix socket path or host:port
	Token string
	http  *http.Client
	// stream has no time limit: a followed stream lasts as long as the
	// caller's context.
	stream *http.Client
	base   string
}

// NewClient returns a client for addr.
func NewClient(addr, token string) *Client {
	c := &Client{Addr: addr, Token: token}
	tr := &http.Transport{Proxy: nil}
	if IsUnix(addr) {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}
		c.base = "http://agent"
	} else {
		c.base = "http://" + addr
	}
	c.http = &http.Client{Transport: tr, Timeout: 3 * time.Minute}
	c.stream = &http.Client{Transport: tr}
	return c
}

// Do calls method path with an optional JSON body and decodes the answer
// into out; an error status returns the API's error message.
func (c *Client) Do(method, path string, body io.Reader, out any) error {
	raw, err := c.call(method, path, body)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

// call calls method path and returns the answer's body; an error status
// returns the API's error message.
func (c *Client) call(method, path string, body io.Reader) ([]byte, error) {
	resp, err := c.send(context.Background(), c.http, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// Stream calls GET path and returns the answer's body as it arrives (a
// followed log), for as long as ctx lasts; the caller closes it.
func (c *Client) Stream(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, c.stream, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// send sends a request with the token; an error status returns the API's
// error message (and closes the body).
func (c *Client) send(ctx context.Context, hc *http.Client, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the agent's admin API at %s: %w", c.Addr, err)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", resp.Status, err)
	}
	var e struct{ Error string }
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return nil, fmt.Errorf("%s", e.Error)
	}
	return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(raw)))
}

// Get calls GET path and returns the answer's body as it is (a value of
// the key-value store).
func (c *Client) Get(path string) ([]byte, error) { return c.call("GET", path, nil) }
