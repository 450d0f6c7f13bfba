package admin

import (
	"fmt"
	"io"

	"github.com/ferry-vm/ferry/internal/termtext"
)

// printError prints a failed call's error on stderr, escaped
// (termtext.Visible): the agent's errors may quote a program (a failed
// boot's error is the app's own message).
func printError(stderr io.Writer, err error) {
	fmt.Fprintf(stderr, "host-agent: %s\n", termtext.Visible(err.Error()))
}
