package kmod

import (
	"strings"

	"github.com/ferry-vm/ferry/protocol/contract"
)

// CmdlineParams returns the parameters the kernel command line gives a
// module (words of the form module.key=value, with '-' and '_' alike in
// the module name), joined by spaces as init_module wants them (values
// with blanks quoted). A loadable module does not see these unless its
// loader passes them, as modprobe does; Index.Params is the place.
func CmdlineParams(cmdline, module string) string {
	module = strings.ReplaceAll(module, "-", "_")
	var params []string
	for _, word := range contract.SplitCmdline(cmdline) {
		key, _, _ := strings.Cut(word, "=")
		mod, param, ok := strings.Cut(key, ".")
		if !ok || param == "" || strings.ReplaceAll(mod, "-", "_") != module {
			continue
		}
		word = strings.TrimPrefix(word, mod+".")
		if k, v, ok := strings.Cut(word, "="); ok && strings.ContainsAny(v, " \t") {
			word = k + `="` + v + `"` // the kernel's parser takes quoted values
		}
		params = append(params, word)
	}
	return strings.Join(params, " ")
}
