package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
	"unicode/utf8"

	"github.com/ferry-vm/ferry/internal/logring"
	"github.com/ferry-vm/ferry/internal/termtext"
)

// followCheck is how often a follower of a program's output checks that
// the program is still deployed (a deleted program's ring gets no more
// lines: its followers' streams end).
const followCheck = 2 * time.Second

// LogLine is one line of program output.
type LogLine struct {
	Time   string `json:"time"`
	Source string `json:"source"` // stdout, stderr, or ferry for the agent's notes
	Origin int    `json:"origin"` // the worker or process number
	Line   string `json:"line"`
	// Bytes are the line's bytes, base64 in JSON, when they are not
	// valid UTF-8: Line then has U+FFFD where they were not (as JSON
	// strings must), and Bytes keep what the program wrote.
	Bytes []byte `json:"bytes,omitempty"`
}

// logLine is an entry of a program's ring as the API gives it.
func logLine(e logring.Entry) LogLine {
	l := LogLine{Time: time.Unix(0, e.UnixNano).UTC().Format(time.RFC3339Nano), Source: e.Source, Origin: e.Origin, Line: string(e.Line)}
	if !utf8.Valid(e.Line) {
		l.Bytes = e.Line
	}
	return l
}

// text is the line as the program wrote it.
func (l LogLine) text() []byte {
	if l.Bytes != nil {
		return l.Bytes
	}
	return []byte(l.Line)
}

// logs serves GET /v1/programs/{id}/logs: the kept output lines as a JSON
// array, or, with follow=1, as NDJSON (one LogLine a line,
// application/x-ndjson) followed by every line that comes later, across
// the program's VM restarts, until the client leaves or the program is
// deleted. since=DURATION (Go syntax: 30s, 5m) keeps only lines at most
// that old.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ring, err := s.Programs.LogRing(id)
	if err != nil {
		writeError(w, http.StatusNotFound, "no such program")
		return
	}
	var oldest int64 // unix nanos; 0: every kept line
	if v := r.URL.Query().Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("since: %q is not a duration such as 30s or 5m", v))
			return
		}
		oldest = time.Now().Add(-d).UnixNano()
	}
	kept := ring.Since(0)
	var seq uint64 // the last line sent: a follower waits for the next
	if len(kept) > 0 {
		seq = kept[len(kept)-1].Seq
	}
	for len(kept) > 0 && kept[0].UnixNano < oldest {
		kept = kept[1:]
	}
	if r.URL.Query().Get("follow") == "" {
		out := make([]LogLine, 0, len(kept))
		for _, e := range kept {
			out = append(out, logLine(e))
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	for _, e := range kept {
		enc.Encode(logLine(e))
	}
	if rc.Flush() != nil {
		return
	}
	for {
		if err := s.follow(r.Context(), id, ring, &seq, enc); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// follow waits for the lines of ring after *seq and encodes them (a note
// first when the reader fell behind and lines were lost); it returns an
// error when ctx ends, a write fails or the program is no longer deployed
// with this ring.
func (s *Server) follow(ctx context.Context, id string, ring *logring.Ring, seq *uint64, enc *json.Encoder) error {
	wait, cancel := context.WithTimeout(ctx, followCheck)
	entries, err := ring.Wait(wait, *seq)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if now, _ := s.Programs.LogRing(id); now != ring {
			return fmt.Errorf("program %s was deleted", id)
		}
		return nil
	}
	if missed := entries[0].Seq - *seq - 1; missed > 0 {
		note := LogLine{Time: time.Now().UTC().Format(time.RFC3339Nano), Source: "ferry",
			Line: fmt.Sprintf("%d lines not shown: the reader fell behind the agent's ring", missed)}
		if err := enc.Encode(note); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if err := enc.Encode(logLine(e)); err != nil {
			return err
		}
	}
	*seq = entries[len(entries)-1].Seq
	return nil
}

// logsPath is the API's path of a program's logs.
func logsPath(id string, since time.Duration, follow bool) string {
	q := url.Values{}
	if since > 0 {
		q.Set("since", since.String())
	}
	if follow {
		q.Set("follow", "1")
	}
	path := "/v1/programs/" + url.PathEscape(id) + "/logs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path
}

// printLogLine prints a line of program output for people: time, stream,
// worker, line, with the terminal's controls escaped (termtext.AppendVisible), or
// the line's bytes as they are with raw.
func printLogLine(w io.Writer, l LogLine, raw bool) {
	out := termtext.AppendVisible(nil, []byte(l.Time))
	out = append(out, ' ')
	out = termtext.AppendVisible(out, []byte(l.Source))
	out = fmt.Appendf(out, "[%d] ", l.Origin)
	if raw {
		out = append(out, l.text()...)
	} else {
		out = termtext.AppendVisible(out, l.text())
	}
	w.Write(append(out, '\n'))
}

// followLogs prints a followed log as its lines arrive (each NDJSON line
// as it is with asJSON but C1 controls escaped (termtext.AppendJSONVisible), raw as
// printLogLine takes it) until the agent ends the stream (the program was
// deleted, the agent stopped: status 1) or the process is interrupted.
func followLogs(c *Client, path string, asJSON, raw bool, stdout, stderr io.Writer) int {
	body, err := c.Stream(context.Background(), path)
	if err != nil {
		printError(stderr, err)
		return 1
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if asJSON {
			stdout.Write(append(termtext.AppendJSONVisible(nil, sc.Bytes()), '\n'))
			continue
		}
		var l LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			fmt.Fprintf(stderr, "host-agent: a line of the followed log is not JSON: %v\n", err)
			return 1
		}
		printLogLine(stdout, l, raw)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(stderr, "host-agent: following the log: %v\n", err)
	} else {
		fmt.Fprintln(stderr, "host-agent: the agent ended the log (the program was deleted, or the agent stopped)")
	}
	return 1
}
