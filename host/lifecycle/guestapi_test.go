package lifecycle

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/host/guestlink"
	"github.com/ferry-vm/ferry/protocol/contract"
	"github.com/ferry-vm/ferry/protocol/message"
	"github.com/ferry-vm/ferry/protocol/mux"
)

// guestCall opens a guest API stream from the fake init and returns the
// answer.
func guestCall(t *testing.T, sess *mux.Session, path string) (int, string) {
	t.Helper()
	ctx := timeout(t)
	st, err := sess.Open(ctx, &message.RequestHead{Method: []byte("GET"), Path: []byte(path)}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var rh message.ResponseHead
	if err := st.ReadResponse(ctx, &rh); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	return int(rh.Status), string(b)
}

// Options.GuestAPI is asked for each boot's handler before init is
// configured, with the boot's Instance (its Program and VM): a call the
// app makes while it starts is answered, and the handler is the one of
// that boot.
func TestGuestAPIHandlerPerBoot(t *testing.T) {
	be := newFakeBackend()
	hooked := make(chan *Instance, 2)
	m := newTestManager(t, be, Options{IdleTimeout: -1, GuestAPI: func(inst *Instance) http.Handler {
		hooked <- inst
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(inst.Program.ID + " " + r.URL.Path))
		})
	}})
	p := &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "caller"}
	ctx := timeout(t)
	booted := make(chan *Instance, 1)
	go func() {
		inst, err := m.Acquire(ctx, p)
		if err != nil {
			t.Error(err)
		}
		booted <- inst
	}()
	vm := <-be.Started()
	// The boot is held (Gate): init has not answered its configuration.
	if status, body := guestCall(t, vm.Session(), "/v1/properties"); status != 200 || body != "caller /v1/properties" {
		t.Errorf("a call during the boot: %d %q", status, body)
	}
	close(be.Gate)
	inst := <-booted
	if inst == nil {
		return
	}
	defer inst.Release()
	if h := <-hooked; h != inst || h.Program != p || h.VM != inst.VM {
		t.Errorf("the hook had %p (program %p), the boot is %p (program %p)", h, h.Program, inst, p)
	}
	if len(hooked) != 0 {
		t.Error("the hook was called more than once for one boot")
	}
}

// Without Options.GuestAPI every guest call is answered 503.
func TestNoGuestAPIAnswers503(t *testing.T) {
	be := newFakeBackend()
	close(be.Gate)
	m := newTestManager(t, be, Options{IdleTimeout: -1})
	inst, err := m.Acquire(timeout(t), &Program{Interface: contract.InterfaceASGI, Entrypoint: "main:app", ID: "lonely"})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Release()
	vm := <-be.Started()
	if status, body := guestCall(t, vm.Session(), "/v1/kv/x"); status != 503 || !strings.Contains(body, guestlink.NoAPI) {
		t.Errorf("%d %q", status, body)
	}
}
