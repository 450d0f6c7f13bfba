package admin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
	"github.com/ferry-vm/ferry/host/trigger"
	"github.com/ferry-vm/ferry/protocol/message"
)

// hostileLines are a program's lines that would act on a terminal, and a
// harmless one.
var hostileLines = []string{
	"copy \x1b]52;c;cm0gLXJmIC8K\x07 done",
	"\x1b[1A\x1b[2Kcovering the line above",
	"nul\x00byte",
	"bytes \xff\xfe not UTF-8",
	"tab\tand 日本語 🚢",
	"invoice_\u202egnp.exe shows as invoice_exe.png",
}

// The CLI prints a program's lines with their controls escaped, from the
// kept lines and from a followed log; --raw prints the bytes the program
// wrote (not U+FFFD for the invalid ones), and --json the API's objects,
// with the bytes of a line that is not UTF-8.
func TestLogsCommandEscapesControls(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{}, "", "")
	if code, _ := f.call(t, "PUT", "/v1/programs/talk", f.manifest("")); code != http.StatusCreated {
		t.Fatal(code)
	}
	for _, l := range hostileLines {
		f.programs.Output("talk", logAt(time.Now(), l))
	}
	run := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if rc := Command(append([]string{"--admin", f.addr}, args...), &stdout, &stderr); rc != 0 {
			t.Fatalf("%v: status %d: %s", args, rc, stderr.String())
		}
		return stdout.String()
	}
	escaped := []string{
		`copy \x1b]52;c;cm0gLXJmIC8K\x07 done`,
		`\x1b[1A\x1b[2Kcovering the line above`,
		`nul\x00byte`,
		`bytes \xff\xfe not UTF-8`,
		"tab\tand 日本語 🚢",
		`invoice_\u202egnp.exe shows as invoice_exe.png`,
	}
	checkEscaped := func(what, out string) {
		t.Helper()
		if strings.ContainsAny(out, "\x1b\x07\x00\ufffd\u202e") || !strings.Contains(out, "\t") {
			t.Errorf("%s: controls or U+FFFD printed, or the tab lost: %q", what, out)
		}
		for _, want := range escaped {
			if !strings.Contains(out, "stdout[0] "+want+"\n") {
				t.Errorf("%s: no line %q in %q", what, want, out)
			}
		}
	}
	checkEscaped("logs", run("logs", "talk"))

	raw := run("logs", "--raw", "talk")
	for _, want := range hostileLines {
		if !strings.Contains(raw, "stdout[0] "+want+"\n") {
			t.Errorf("--raw: no line %q in %q", want, raw)
		}
	}

	var lines []LogLine
	if err := json.Unmarshal([]byte(run("logs", "--json", "talk")), &lines); err != nil || len(lines) != len(hostileLines) {
		t.Fatalf("--json: %d lines, %v", len(lines), err)
	}
	for i, l := range lines {
		valid := i != 3
		if valid && (l.Line != hostileLines[i] || l.Bytes != nil) || !valid && (string(l.Bytes) != hostileLines[i] || l.Line != "bytes \ufffd\ufffd not UTF-8") {
			t.Errorf("--json: line %d is %+v, for %q", i, l, hostileLines[i])
		}
	}

	// The followed log, until the program is deleted.
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		rc := Command([]string{"--admin", f.addr, "logs", "-f", "talk"}, pw, io.Discard)
		pw.Close()
		done <- rc
	}()
	followed := bufio.NewReader(pr)
	var out strings.Builder
	for range hostileLines {
		line, err := followed.ReadString('\n')
		if err != nil {
			t.Fatalf("the followed log ended after %q: %v", out.String(), err)
		}
		out.WriteString(line)
	}
	if code, _ := f.call(t, "DELETE", "/v1/programs/talk", ""); code != http.StatusOK {
		t.Fatal(code)
	}
	copied := make(chan struct{})
	go func() { // until the follower sees the program gone
		io.Copy(&out, followed)
		close(copied)
	}()
	select {
	case <-copied:
	case <-time.After(20 * time.Second):
		pr.Close() // the follower's next write fails
		t.Fatal("the followed log did not end when the program was deleted")
	}
	if rc := <-done; rc != 1 {
		t.Errorf("logs -f ended with status %d, want 1", rc)
	}
	checkEscaped("logs -f", out.String())
}

// A failed delivery's error, which quotes the app's answer, is printed
// with its controls escaped.
func TestPrintTriggersEscapesTheAppsAnswer(t *testing.T) {
	var out bytes.Buffer
	printTriggers(&out, trigger.Record{Deliveries: []trigger.Delivery{{Time: time.Now(), Trigger: "message:orders", Status: 500,
		Error: "500: \x1b]52;c;cm0gLXJmIC8K\x07oops", Attempts: 4}}})
	if got := out.String(); strings.ContainsAny(got, "\x1b\x07") || !strings.Contains(got, `500: \x1b]52;c;cm0gLXJmIC8K\x07oops`) {
		t.Errorf("printed %q", got)
	}
}

// A boot that failed quotes the app (its lifespan's exception, say):
// program status prints it with its controls escaped, and so does the
// error restart prints on stderr.
func TestStatusAndErrorsEscapeTheAppsText(t *testing.T) {
	const hostile = "startup failed: \x1b]52;c;cm0gLXJmIC8K\x07 \u009b2J\x1b[1A gone"
	const shown = `startup failed: \x1b]52;c;cm0gLXJmIC8K\x07 \u009b2J\x1b[1A gone`
	be := &backendtest.Backend{Refuse: &message.ConfigResult{Phase: []byte("lifespan"), Message: []byte(hostile)}}
	f := newAPI(t, be, "", "")
	if code, _ := f.call(t, "PUT", "/v1/programs/boom", f.manifest("")); code != http.StatusCreated {
		t.Fatal(code)
	}
	var stdout, stderr bytes.Buffer
	if rc := Command([]string{"--admin", f.addr, "restart", "boom"}, &stdout, &stderr); rc != 1 {
		t.Fatalf("restart of a program that fails to start: status %d: %s", rc, stderr.String())
	}
	if got := stderr.String(); strings.ContainsAny(got, "\x1b\x07\u009b") || !strings.Contains(got, shown) {
		t.Errorf("restart printed %q", got)
	}
	stdout.Reset()
	stderr.Reset()
	if rc := Command([]string{"--admin", f.addr, "status", "boom"}, &stdout, &stderr); rc != 0 {
		t.Fatalf("status: %d: %s", rc, stderr.String())
	}
	if got := stdout.String(); strings.ContainsAny(got, "\x1b\x07\u009b") || !strings.Contains(got, "last_boot_error: lifespan: "+shown+"\n") {
		t.Errorf("status printed %q", got)
	}
}

// JSON output escapes C0 controls itself; the CLI's --json also writes
// C1 controls and DEL as \u escapes (the same JSON values), which a
// terminal would otherwise act on (U+009B is CSI).
func TestJSONOutputEscapesC1(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{}, "", "")
	if code, _ := f.call(t, "PUT", "/v1/programs/talk", f.manifest("")); code != http.StatusCreated {
		t.Fatal(code)
	}
	const hostile = "\u009b2J\u009d0;owned\u009c del\x7f é"
	f.programs.Output("talk", logAt(time.Now(), hostile))
	check := func(what, out string) {
		t.Helper()
		if strings.ContainsAny(out, "\u0080\u009b\u009c\u009d\x7f") || !strings.Contains(out, `\u009b2J\u009d0;owned\u009c del\u007f é`) {
			t.Errorf("%s printed %q", what, out)
		}
	}
	var stdout, stderr bytes.Buffer
	if rc := Command([]string{"--admin", f.addr, "--json", "logs", "talk"}, &stdout, &stderr); rc != 0 {
		t.Fatalf("logs --json: %d: %s", rc, stderr.String())
	}
	check("logs --json", stdout.String())
	var lines []LogLine
	if err := json.Unmarshal(stdout.Bytes(), &lines); err != nil || len(lines) != 1 || lines[0].Line != hostile {
		t.Errorf("logs --json: %+v, %v", lines, err)
	}

	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		rc := Command([]string{"--admin", f.addr, "--json", "logs", "-f", "talk"}, pw, io.Discard)
		pw.Close()
		done <- rc
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	check("logs -f --json", line)
	var l LogLine
	if err := json.Unmarshal([]byte(line), &l); err != nil || l.Line != hostile {
		t.Errorf("logs -f --json: %+v, %v", l, err)
	}
	if code, _ := f.call(t, "DELETE", "/v1/programs/talk", ""); code != http.StatusOK {
		t.Fatal(code)
	}
	go io.Copy(io.Discard, pr)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		pr.Close()
		t.Fatal("the followed log did not end when the program was deleted")
	}
}
