// Package trigger runs programs on events beyond HTTP: the times of a
// program's on.schedule, and the events posted to the agent (the admin
// API's POST /v1/events) that its on.message subscriptions match. Each
// event reaches the program as an HTTP POST to EventPath, served as a
// routed request is (front.Router.ServeProgram: the VM booted on demand,
// the program's limits), retried with backoff while it fails in a way
// that may pass, and its outcome kept in a record of the program's last
// deliveries (program status).
package trigger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/host/manifest"
	"github.com/ferry-vm/ferry/internal/supervise"
	"github.com/robfig/cron/v3"
)

// EventPath is the path a program receives its events at, as POST
// requests with an empty root_path. The agent's front refuses requests
// from outside to paths under ReservedPrefix, so a program can trust that
// what arrives there comes from the agent.
const EventPath = "/_ferry/event"

// Headers of an event's request.
const (
	// HeaderEvent marks the request as an event and says its kind
	// (KindSchedule or KindMessage).
	HeaderEvent = "X-Ferry-Event"
	// HeaderEventID is the event's id, the same on every attempt.
	HeaderEventID = "X-Ferry-Event-Id"
	// HeaderAttempt is the attempt's number, from 1.
	HeaderAttempt = "X-Ferry-Attempt"
	// HeaderTopic is a message event's topic.
	HeaderTopic = "X-Ferry-Topic"
)

// Kinds of events.
const (
	KindSchedule = "schedule"
	KindMessage  = "message"
)

// Defaults of Options.
const (
	DefaultAttempts       = 4
	DefaultAttemptTimeout = 2 * time.Minute
	DefaultKeep           = 50
	DefaultMaxPending     = 64
	// MaxBody bounds a posted event's body.
	MaxBody = 256 << 10
)

// DefaultRetry is the delay before each retry of a delivery: 1 s, 2 s,
// 4 s… up to 30 s.
var DefaultRetry = supervise.Policy{Initial: time.Second, Max: 30 * time.Second}

// Event is one event, as its program receives it (the JSON body of the
// request to EventPath).
type Event struct {
	ID   string `json:"id"`
	Kind string `json:"type"` // KindSchedule or KindMessage
	// Time is when the event happened: the scheduled time of a schedule
	// event (whole seconds), the arrival of a posted one.
	Time time.Time `json:"time"`
	// Schedule is a schedule event's on.schedule.
	Schedule string `json:"schedule,omitempty"`
	// Topic and Body are a message event's, as posted (Body is null when
	// none was).
	Topic string          `json:"topic,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// Options configure a Dispatcher.
type Options struct {
	// Serve serves an event's request to a program, as
	// front.Router.ServeProgram does. Required.
	Serve func(w http.ResponseWriter, r *http.Request, id string)
	// Fires, when set, says whether this agent fires a program's schedule
	// now (in a cluster, one node does); nil: always.
	Fires func(ctx context.Context, id string, persistent bool) bool
	// Attempts bounds the tries of one delivery (DefaultAttempts when
	// 0), Retry spaces them (DefaultRetry when zero), AttemptTimeout
	// bounds each (DefaultAttemptTimeout when 0; the program's own
	// resources.seconds applies too).
	Attempts       int
	Retry          supervise.Policy
	AttemptTimeout time.Duration
	// Keep is how many deliveries are recorded per program
	// (DefaultKeep when 0); MaxPending how many may be pending at once
	// per program (DefaultMaxPending when 0): beyond, an event is
	// recorded as dropped.
	Keep, MaxPending int
	// OnDelivery, when set, is told of every delivery done (the agent's
	// metrics).
	OnDelivery func(id string, d Delivery)
	Log        *slog.Logger
}

// Dispatcher follows the deployed programs' triggers and delivers their
// events. Its methods are safe for concurrent use.
type Dispatcher struct {
	opt    Options
	ctx    context.Context // ends at Close: schedules stop, retries give up
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	programs map[string]*program
	started  bool // schedules fire (Start)
}

// program is one deployed program's triggers and deliveries.
type program struct {
	persistent bool
	schedule   string
	sched      cron.Schedule // schedule parsed; nil: none
	subs       []manifest.Subscription
	stop       context.CancelFunc // its schedule's loop; nil: none
	records    []Delivery         // oldest first, at most Keep
	pending    int
}

// ErrTopic is an event posted with a missing or too long topic.
var ErrTopic = fmt.Errorf("an event's topic is a string of 1 to %d bytes", manifest.MaxTopic)

// New returns a dispatcher; it follows programs as Changed tells it of
// them, fires their schedules once started (Start), and delivers until
// Close.
func New(o Options) *Dispatcher {
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.Retry == (supervise.Policy{}) {
		o.Retry = DefaultRetry
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = DefaultAttemptTimeout
	}
	if o.Keep <= 0 {
		o.Keep = DefaultKeep
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Dispatcher{opt: o, ctx: ctx, cancel: cancel, programs: map[string]*program{}}
}

// Changed follows a program's deploy (m) or delete (nil): its schedule
// starts or stops, its subscriptions are replaced, its record is kept;
// a deleted program's record goes with it. (front.Programs.Changed.)
func (d *Dispatcher) Changed(id string, m *manifest.Program) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.programs[id]
	if p != nil && p.stop != nil {
		p.stop()
		p.stop = nil
	}
	if m == nil {
		delete(d.programs, id)
		return
	}
	if p == nil {
		p = &program{}
		d.programs[id] = p
	}
	p.persistent, p.schedule, p.subs, p.sched = m.On.Persistent, m.On.Schedule, m.On.Message, nil
	if m.On.Schedule != "" {
		sched, err := manifest.ParseSchedule(m.On.Schedule)
		if err != nil { // validated with the manifest: not expected
			d.opt.Log.Error("trigger: schedule", "program", id, "schedule", m.On.Schedule, "err", err)
		}
		p.sched = sched
	}
	if d.started {
		d.startSchedule(id, p)
	}
}

// Start fires the schedules, those of the programs followed so far and
// of those to come. The agent starts it once it can serve events.
func (d *Dispatcher) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started {
		return
	}
	d.started = true
	for id, p := range d.programs {
		d.startSchedule(id, p)
	}
}

// startSchedule starts the loop of p's schedule, if it has one (d.mu
// held).
func (d *Dispatcher) startSchedule(id string, p *program) {
	if p.sched == nil || d.ctx.Err() != nil {
		return
	}
	ctx, stop := context.WithCancel(d.ctx)
	p.stop = stop
	d.wg.Add(1)
	go func(spec string, sched cron.Schedule, persistent bool) {
		defer d.wg.Done()
		d.runSchedule(ctx, id, spec, sched, persistent)
	}(p.schedule, p.sched, p.persistent)
}

// Posted is what Post did with an event.
type Posted struct {
	Event    string   `json:"event"`    // its id
	Topic    string   `json:"topic"`    // its topic
	Programs []string `json:"programs"` // the subscribed programs it goes to, sorted
}

// Post delivers an event of topic with body (a JSON document, or empty
// for none) to every program with a matching subscription, in the
// background; it returns which.
func (d *Dispatcher) Post(topic string, body json.RawMessage) (Posted, error) {
	if topic == "" || len(topic) > manifest.MaxTopic {
		return Posted{}, ErrTopic
	}
	var decoded any
	if len(body) > 0 {
		if err := json.Unmarshal(body, &decoded); err != nil {
			return Posted{}, fmt.Errorf("an event's body is a JSON document: %w", err)
		}
	}
	ev := &Event{ID: newID(), Kind: KindMessage, Time: time.Now().UTC(), Topic: topic, Body: body}
	out := Posted{Event: ev.ID, Topic: topic, Programs: []string{}}
	d.mu.Lock()
	for id, p := range d.programs {
		for _, s := range p.subs {
			if s.Matches(topic, decoded) {
				out.Programs = append(out.Programs, id)
				break
			}
		}
	}
	d.mu.Unlock()
	sort.Strings(out.Programs)
	for _, id := range out.Programs {
		d.dispatch(id, ev)
	}
	return out, nil
}

// Record is a program's triggers and deliveries as status shows them.
type Record struct {
	// Schedule and Message are its on.schedule and on.message.
	Schedule string                  `json:"schedule,omitempty"`
	Message  []manifest.Subscription `json:"message,omitempty"`
	// Pending counts the deliveries queued, in progress or waiting to
	// retry.
	Pending int `json:"pending"`
	// Deliveries are the last ones done, newest first.
	Deliveries []Delivery `json:"deliveries"`
}

// Deliveries returns a program's record; ok is false when the program
// is not followed.
func (d *Dispatcher) Deliveries(id string) (Record, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.programs[id]
	if p == nil {
		return Record{}, false
	}
	r := Record{Schedule: p.schedule, Message: p.subs, Pending: p.pending, Deliveries: make([]Delivery, 0, len(p.records))}
	for i := len(p.records) - 1; i >= 0; i-- {
		r.Deliveries = append(r.Deliveries, p.records[i])
	}
	return r, true
}

// Close stops the schedules and the deliveries (a delivery in progress
// ends as its request is cancelled; one waiting to retry is recorded as
// given up) and waits for them until ctx ends.
func (d *Dispatcher) Close(ctx context.Context) error {
	d.cancel()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.New("trigger: deliveries still in progress")
	}
}
