package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// websocketEchoes keeps conns websocket connections to url busy for d, each
// sending a 32-byte text message and waiting for its echo, again and
// again. Requests counts round trips.
func websocketEchoes(ctx context.Context, url string, conns int, d time.Duration) (loadResult, error) {
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	clients := make([]*websocket.Conn, conns)
	for i := range clients {
		c, _, err := websocket.Dial(dialCtx, url, nil)
		if err != nil {
			for _, c := range clients[:i] {
				c.CloseNow()
			}
			return loadResult{}, fmt.Errorf("websocket %d of %d: %w", i+1, conns, err)
		}
		clients[i] = c
	}
	msg := []byte("ferry websocket echo benchmark!!")
	var (
		mu        sync.Mutex
		latencies []time.Duration
		errs      int64
		firstErr  error
		wg        sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close(websocket.StatusNormalClosure, "")
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t := time.Now()
				err := c.Write(ctx, websocket.MessageText, msg)
				if err == nil {
					var got []byte
					_, got, err = c.Read(ctx)
					if err == nil && string(got) != string(msg) {
						err = fmt.Errorf("echo %q, want %q", got, msg)
					}
				}
				if err != nil {
					mu.Lock()
					errs++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					break
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	if len(latencies) == 0 {
		return loadResult{}, fmt.Errorf("no websocket echo completed: %v", firstErr)
	}
	slices.Sort(latencies)
	return loadResult{Requests: int64(len(latencies)), Seconds: elapsed, Errors: errs,
		P50: percentile(latencies, 50), P99: percentile(latencies, 99)}, nil
}

// percentile returns the p-th percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}
