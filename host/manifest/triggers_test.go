package manifest

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// on.schedule and on.message parse, a program with only triggers is
// valid, and each bad value names its field.
func TestTriggersParse(t *testing.T) {
	program := func(on string) string {
		return `{"programs": {"a": {"code": {"entrypoint": "m:a", "interface": "asgi", "path": "x"}, "on": ` + on + `}}}`
	}
	f, err := Parse([]byte(program(`{"http": false, "schedule": "@every 1s", "message": [{"topic": "orders"}, {"topic": "x", "body": {"kind": "paid", "n": 2}}]}`)))
	if err != nil {
		t.Fatal(err)
	}
	on := f.Programs["a"].On
	if on.Schedule != "@every 1s" || len(on.Message) != 2 || on.Message[0]["topic"] != "orders" || !on.Triggered() {
		t.Fatalf("on: %+v", on)
	}
	// The reference's null message list is no subscription.
	if f, err := Parse([]byte(program(`{"http": true, "message": null}`))); err != nil || f.Programs["a"].On.Triggered() {
		t.Fatalf("null message: %v", err)
	}
	cases := map[string]string{
		`{"schedule": "every second"}`:                       "programs.a.on.schedule",
		`{"schedule": "* * *"}`:                              "programs.a.on.schedule",
		`{"schedule": "61 * * * * *"}`:                       "programs.a.on.schedule",
		`{"schedule": "@every 1ms"}`:                         "programs.a.on.schedule",
		`{"schedule": "@every 0s"}`:                          "programs.a.on.schedule",
		`{"schedule": "@every -5s"}`:                         "programs.a.on.schedule",
		`{"schedule": "@every 1.5s"}`:                        "programs.a.on.schedule",
		`{"schedule": "CRON_TZ=UTC @every 10ms"}`:            "programs.a.on.schedule",
		`{"message": [{}]}`:                                  "programs.a.on.message[0]",
		`{"message": [{"topic": ""}]}`:                       "programs.a.on.message[0].topic",
		`{"message": [{"topic": 3}]}`:                        "programs.a.on.message[0].topic",
		`{"message": [{"topic": "a"}, {"channel": "TEST"}]}`: "programs.a.on.message[1].channel",
		`{"message": [{"body": {"ids": [1, 2]}}]}`:           "programs.a.on.message[0].body.ids",
		`{"http": false}`:                                    "programs.a.on",
	}
	for on, field := range cases {
		_, err := Parse([]byte(program(on)))
		var ferr *FieldError
		if !errors.As(err, &ferr) || ferr.Field != field {
			t.Errorf("%s: want an error at %s, got %v", on, field, err)
		}
	}
}

// A manifest with triggers survives the cluster's JSON round trip.
func TestTriggersRoundTrip(t *testing.T) {
	in := On{HTTP: true, Triggers: Triggers{Schedule: "0 * * * *", Message: []Subscription{{"topic": "t"}}}}
	doc, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out On
	if err := json.Unmarshal(doc, &out); err != nil || out.Schedule != in.Schedule || out.Message[0]["topic"] != "t" {
		t.Fatalf("%s -> %+v, %v", doc, out, err)
	}
}

// Six fields take seconds first, five are standard cron, descriptors
// work; times are UTC unless CRON_TZ says otherwise.
func TestParseSchedule(t *testing.T) {
	from := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	cases := map[string]time.Time{
		"* * * * * *":                  from.Add(time.Second),
		"*/5 * * * *":                  from.Add(5 * time.Minute),
		"@every 1s":                    from.Add(time.Second),
		"@hourly":                      from.Add(time.Hour),
		"0 12 * * *":                   from.Add(2 * time.Hour),
		"CRON_TZ=Etc/GMT-1 0 12 * * *": from.Add(time.Hour), // 12:00 at UTC+1 is 11:00 UTC
	}
	for spec, want := range cases {
		s, err := ParseSchedule(spec)
		if err != nil {
			t.Errorf("%s: %v", spec, err)
			continue
		}
		if got := s.Next(from); !got.Equal(want) {
			t.Errorf("%s: next after %s is %s, want %s", spec, from, got, want)
		}
	}
}

// Subscriptions match as the reference's do: every named field, objects
// by inclusion.
func TestSubscriptionMatches(t *testing.T) {
	body := map[string]any{"kind": "paid", "n": 2.0, "ok": true, "who": map[string]any{"name": "ann", "id": "7"}}
	cases := []struct {
		sub   Subscription
		topic string
		want  bool
	}{
		{Subscription{"topic": "orders"}, "orders", true},
		{Subscription{"topic": "orders"}, "order", false},
		{Subscription{"topic": "orders", "body": map[string]any{"kind": "paid"}}, "orders", true},
		{Subscription{"topic": "orders", "body": map[string]any{"kind": "new"}}, "orders", false},
		{Subscription{"body": map[string]any{"n": 2.0, "ok": true}}, "any", true},
		{Subscription{"body": map[string]any{"who": map[string]any{"name": "ann"}}}, "any", true},
		{Subscription{"body": map[string]any{"who": map[string]any{"name": "bob"}}}, "any", false},
		{Subscription{"body": map[string]any{"missing": "x"}}, "any", false},
		{Subscription{"body": map[string]any{"kind": map[string]any{"x": "y"}}}, "any", false},
		{Subscription{}, "orders", false},
	}
	for _, c := range cases {
		if got := c.sub.Matches(c.topic, body); got != c.want {
			t.Errorf("%v on topic %s: %v, want %v", c.sub, c.topic, got, c.want)
		}
	}
}
