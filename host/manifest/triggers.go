package manifest

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Triggers are the events beyond HTTP that run a program: the manifest's
// on.schedule and on.message (On embeds them).
type Triggers struct {
	// Schedule is a cron specification (ParseSchedule): at each of its
	// times the program is sent a schedule event.
	Schedule string `json:"schedule,omitempty"`
	// Message lists subscriptions, as an Aleph PROGRAM message's
	// on.message does: an event posted to the agent is sent to the
	// program when one of them matches it (Subscription).
	Message []Subscription `json:"message,omitempty"`
}

// Subscription selects the events posted to the agent that a program
// receives, after the reference's on.message subscriptions: every field
// it names must match the event's field of that name. The fields of an
// event are "topic" (a string) and "body" (its JSON document). A string,
// number or boolean matches an equal value; an object matches an object
// that has each of its fields, matching. {"topic": "orders"} receives
// every event of the topic orders; {"topic": "orders", "body": {"kind":
// "paid"}} only those whose body's kind is "paid".
type Subscription map[string]any

// MaxTopic bounds the length of a topic in bytes.
const MaxTopic = 256

// scheduleParser reads cron specifications: five fields (minute, hour,
// day of month, month, day of week), or six with seconds first, or a
// descriptor (@hourly, @daily, @every 1s…); CRON_TZ=Zone first names the
// time zone (default UTC).
var scheduleParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses an on.schedule specification: standard cron with
// five fields ("*/5 * * * *": every five minutes), six fields whose first
// is the second ("* * * * * *": every second), or a descriptor ("@every
// 1s", "@hourly"), as github.com/robfig/cron/v3 reads them. Times are UTC
// unless the spec starts with CRON_TZ=Zone.
//
// An @every duration is a whole number of seconds, at least one: the
// parser would run "@every 1ms", "@every -5s" or "@every 1.5s" every
// second (or every whole second) without a word.
func ParseSchedule(spec string) (cron.Schedule, error) {
	if _, every, ok := strings.Cut(spec, "@every "); ok {
		if d, err := time.ParseDuration(strings.TrimSpace(every)); err == nil && (d < time.Second || d%time.Second != 0) {
			return nil, fmt.Errorf("@every %s: the period is a whole number of seconds, at least 1s", strings.TrimSpace(every))
		}
	}
	if !strings.HasPrefix(spec, "CRON_TZ=") && !strings.HasPrefix(spec, "TZ=") {
		spec = "CRON_TZ=UTC " + spec
	}
	return scheduleParser.Parse(spec)
}

// Triggered reports whether a program has a trigger beyond HTTP.
func (t Triggers) Triggered() bool { return t.Schedule != "" || len(t.Message) > 0 }

// validate checks the triggers; errors name the field under on (field).
func (t Triggers) validate(field string) error {
	if t.Schedule != "" {
		if _, err := ParseSchedule(t.Schedule); err != nil {
			return &FieldError{field + ".schedule", fmt.Sprintf("%q is not a cron schedule (5 fields, 6 with seconds first, or @every DURATION): %v", t.Schedule, err)}
		}
	}
	for i, s := range t.Message {
		if err := s.validate(fmt.Sprintf("%s.message[%d]", field, i)); err != nil {
			return err
		}
	}
	return nil
}

// validate checks a subscription: at least one field, only an event's
// fields, values it can match.
func (s Subscription) validate(field string) error {
	if len(s) == 0 {
		return &FieldError{field, "a subscription names at least one field to match (e.g. {\"topic\": \"orders\"})"}
	}
	for _, k := range slices.Sorted(maps.Keys(s)) {
		v := s[k]
		switch k {
		case "topic":
			topic, ok := v.(string)
			if !ok || topic == "" || len(topic) > MaxTopic {
				return &FieldError{field + ".topic", fmt.Sprintf("a topic is a string of 1 to %d bytes", MaxTopic)}
			}
		case "body":
			if err := matchable(field+".body", v); err != nil {
				return err
			}
		default:
			return &FieldError{field + "." + k, "an event has no such field (its fields are topic and body)"}
		}
	}
	return nil
}

// matchable checks a value a subscription compares: a scalar, or an
// object of such values. Lists and null are refused, as the reference
// refuses them.
func matchable(field string, v any) error {
	switch v := v.(type) {
	case string, float64, bool:
		return nil
	case map[string]any:
		for k, sub := range v {
			if err := matchable(field+"."+k, sub); err != nil {
				return err
			}
		}
		return nil
	default:
		return &FieldError{field, "a subscription matches strings, numbers, booleans and objects of them"}
	}
}

// Matches reports whether an event of topic with body (decoded JSON)
// matches the subscription.
func (s Subscription) Matches(topic string, body any) bool {
	if len(s) == 0 {
		return false
	}
	for k, want := range s {
		var got any
		switch k {
		case "topic":
			got = topic
		case "body":
			got = body
		default:
			return false
		}
		if !includes(want, got) {
			return false
		}
	}
	return true
}

// includes reports whether got matches want: equal scalars, or an object
// with each of want's fields matching.
func includes(want, got any) bool {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return false
		}
		for k, sub := range w {
			gv, ok := g[k]
			if !ok || !includes(sub, gv) {
				return false
			}
		}
		return true
	case string, float64, bool:
		return want == got
	default:
		return false
	}
}
