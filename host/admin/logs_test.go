package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/protocol/message"
)

// A followed log gives the kept lines, then each line as it comes, from
// the program's next VM too after a restart; it ends when the program is
// deleted.
func TestLogsFollowAcrossARestart(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{Logs: 1}, "", "")
	if code, _ := f.call(t, "PUT", "/v1/programs/talk", f.manifest("")); code != http.StatusCreated {
		t.Fatal(code)
	}
	if code, _ := f.call(t, "POST", "/v1/programs/talk/restart", ""); code != http.StatusOK {
		t.Fatal(code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body, err := f.client.Stream(ctx, logsPath("talk", 0, true))
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	lines := bufio.NewScanner(body)
	next := func() LogLine {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("the followed log ended: %v", lines.Err())
		}
		var l LogLine
		if err := json.Unmarshal(lines.Bytes(), &l); err != nil {
			t.Fatalf("%q: %v", lines.Bytes(), err)
		}
		return l
	}
	if l := next(); l.Source != "stdout" || l.Line != "line 0" {
		t.Fatalf("first line %+v, want the kept stdout line 0", l)
	}
	f.be.VMs()[0].Log("stderr", "after following started")
	if l := next(); l.Source != "stderr" || l.Line != "after following started" {
		t.Fatalf("got %+v", l)
	}
	if code, _ := f.call(t, "POST", "/v1/programs/talk/restart", ""); code != http.StatusOK {
		t.Fatal(code)
	}
	if l := next(); l.Line != "line 0" { // the new VM's first line
		t.Fatalf("after the restart: %+v", l)
	}
	vms := f.be.VMs()
	vms[len(vms)-1].Log("stdout", "from the second VM")
	if l := next(); l.Line != "from the second VM" {
		t.Fatalf("after the restart: %+v", l)
	}
	if code, _ := f.call(t, "DELETE", "/v1/programs/talk", ""); code != http.StatusOK {
		t.Fatal(code)
	}
	for lines.Scan() { // up to followCheck
	}
	if err := lines.Err(); err != nil {
		t.Fatalf("the stream of a deleted program broke instead of ending: %v", err)
	}
}

// since keeps only the recent lines; a duration that is not one is a
// 400.
func TestLogsSince(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{}, "", "")
	if code, _ := f.call(t, "PUT", "/v1/programs/talk", f.manifest("")); code != http.StatusCreated {
		t.Fatal(code)
	}
	old := time.Now().Add(-time.Hour)
	f.programs.Output("talk", logAt(old, "an hour ago"))
	f.programs.Output("talk", logAt(time.Now(), "just now"))
	var lines []LogLine
	if err := f.client.Do("GET", logsPath("talk", time.Minute, false), nil, &lines); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1 || lines[0].Line != "just now" {
		t.Fatalf("since 1m: %+v", lines)
	}
	if err := f.client.Do("GET", logsPath("talk", 0, false), nil, &lines); err != nil || len(lines) != 2 {
		t.Fatalf("every line: %+v, %v", lines, err)
	}
	err := f.client.Do("GET", "/v1/programs/talk/logs?since=soon", nil, &lines)
	if err == nil || !strings.Contains(err.Error(), "not a duration") {
		t.Fatalf("since=soon: %v", err)
	}
}

// logAt is a line of stdout written at t.
func logAt(t time.Time, line string) message.Log {
	return message.Log{Source: []byte("stdout"), UnixNano: uint64(t.UnixNano()), Line: []byte(line)}
}
