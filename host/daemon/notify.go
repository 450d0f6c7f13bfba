package daemon

import (
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// notifier tells the service manager (systemd's Type=notify, through
// NOTIFY_SOCKET) how the agent is: READY=1 once it serves, RELOADING=1
// while it re-reads its configuration, STOPPING=1 once it drains. Without
// NOTIFY_SOCKET (not started by systemd) it does nothing.
type notifier struct {
	log *slog.Logger
}

// ready says the agent serves, with a status line systemctl status shows.
func (n notifier) ready(status string) {
	n.send(sd.SdNotifyReady + "\nSTATUS=" + status)
}

// reloading says the agent re-reads its configuration; ready follows.
// MONOTONIC_USEC is what Type=notify-reload (systemd 253 and later) asks
// for; older managers ignore it.
func (n notifier) reloading() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Nano() / int64(time.Microsecond)
	n.send(fmt.Sprintf("%s\nMONOTONIC_USEC=%d\nSTATUS=reloading the configuration", sd.SdNotifyReloading, usec))
}

// stopping says the agent drains its requests and stops its VMs.
func (n notifier) stopping() {
	n.send(sd.SdNotifyStopping + "\nSTATUS=draining: requests in flight finish, then the VMs stop")
}

func (n notifier) send(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		n.log.Warn("notifying the service manager", "err", err)
	}
}
