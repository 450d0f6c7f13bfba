package archive

import "golang.org/x/sys/unix"

const syscallNoFollow = unix.O_NOFOLLOW
