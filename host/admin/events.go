package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/ferry-vm/ferry/host/trigger"
	"github.com/ferry-vm/ferry/internal/termtext"
)

// Events is what the API needs of the agent's triggers (host/trigger's
// Dispatcher): posting an event, a program's triggers and deliveries.
type Events interface {
	Post(topic string, body json.RawMessage) (trigger.Posted, error)
	Deliveries(id string) (trigger.Record, bool)
}

// PostedEvent is the body of POST /v1/events: a topic, and a JSON
// document for the programs subscribed to it (optional).
type PostedEvent struct {
	Topic string          `json:"topic"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// eventRoutes adds the events' routes when the server has Events.
func (s *Server) eventRoutes(mux *http.ServeMux) {
	if s.Events != nil {
		mux.HandleFunc("POST /v1/events", s.postEvent)
	}
}

// postEvent takes an event and answers 202 with the programs it goes to
// (delivered in the background: their status shows how it went).
func (s *Server) postEvent(w http.ResponseWriter, r *http.Request) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, trigger.MaxBody+1024))
	dec.DisallowUnknownFields()
	var ev PostedEvent
	if err := dec.Decode(&ev); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("event: larger than %d bytes", trigger.MaxBody))
			return
		}
		writeError(w, http.StatusBadRequest, `event: want {"topic": "...", "body": JSON}: `+err.Error())
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, http.StatusBadRequest, "event: one JSON document expected")
		return
	}
	posted, err := s.Events.Post(ev.Topic, ev.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "event: "+err.Error())
		return
	}
	s.Log.Info("event posted", "event", posted.Event, "topic", posted.Topic, "programs", posted.Programs)
	writeJSON(w, http.StatusAccepted, posted)
}

// triggers is a program's triggers and deliveries for its status: nil
// when it has neither.
func (s *Server) triggers(id string) *trigger.Record {
	if s.Events == nil {
		return nil
	}
	rec, ok := s.Events.Deliveries(id)
	if !ok || rec.Schedule == "" && len(rec.Message) == 0 && len(rec.Deliveries) == 0 {
		return nil
	}
	return &rec
}

// postEvent posts args (TOPIC [JSON]) to POST /v1/events.
func postEvent(c *Client, args []string) (map[string]any, error) {
	ev := PostedEvent{Topic: args[0]}
	if len(args) > 1 {
		ev.Body = json.RawMessage(args[1])
		if !json.Valid(ev.Body) {
			return nil, fmt.Errorf("the event's body is not JSON: %s", args[1])
		}
	}
	doc, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	var res map[string]any
	err = c.Do("POST", "/v1/events", bytes.NewReader(doc), &res)
	return res, err
}

// printTriggers prints a program's triggers and last deliveries (the
// "triggers" of its status, as decoded JSON) for people.
func printTriggers(w io.Writer, v any) {
	if v == nil {
		return
	}
	doc, _ := json.Marshal(v)
	var rec trigger.Record
	if json.Unmarshal(doc, &rec) != nil {
		return
	}
	if rec.Schedule != "" {
		fmt.Fprintf(w, "%-11s %s\n", "schedule:", rec.Schedule)
	}
	if len(rec.Message) > 0 {
		subs, _ := json.Marshal(rec.Message)
		fmt.Fprintf(w, "%-11s %s\n", "message:", subs)
	}
	fmt.Fprintf(w, "%-11s %d pending, last %d:\n", "deliveries:", rec.Pending, len(rec.Deliveries))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TIME\tTRIGGER\tSTATUS\tATTEMPTS\tSECONDS\tERROR")
	for _, d := range rec.Deliveries {
		status := "ok"
		if !d.OK {
			status = "failed"
		}
		if d.Status != 0 {
			status = fmt.Sprintf("%s %d", status, d.Status)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%.3f\t%s\n", d.Time.Format(time.RFC3339), termtext.Visible(d.Trigger), status, d.Attempts, d.Seconds, termtext.Visible(d.Error))
	}
	tw.Flush()
}
