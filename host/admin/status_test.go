package admin

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/host/backend/backendtest"
)

// The status page lists the programs and draws the running VM's boot
// timeline, with what Observed adds.
func TestStatusPage(t *testing.T) {
	f := newAPI(t, &backendtest.Backend{}, "", "")
	for _, id := range []string{"web", "idle"} {
		if code, _ := f.call(t, "PUT", "/v1/programs/"+id, f.manifest("")); code != http.StatusCreated {
			t.Fatal(code)
		}
	}
	if code, _ := f.call(t, "POST", "/v1/programs/web/restart", ""); code != http.StatusOK {
		t.Fatal(code)
	}
	resp, err := f.client.http.Get(f.client.base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`<tr class="program" data-program="web">`, `<tr class="program" data-program="idle">`,
		`<div class="vm" data-program="web">`, `data-phase="kernel"`, `<div class="phase" data-phase="app">`,
	} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if strings.Contains(string(page), `<div class="vm" data-program="idle">`) {
		t.Error("a VM shown for a program that does not run")
	}
}
