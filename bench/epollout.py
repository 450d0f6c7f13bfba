"""Counts the EPOLLOUT edges a writer's epoll gets when its peer reads.

Go registers every descriptor for EPOLLIN|EPOLLOUT|EPOLLET; a unix socket
raises EPOLLOUT on its writer each time the reader takes data, which wakes
a Go process that waits in epoll for the answer (BENCHMARKS.md, issue 17,
session 9). A pipe raises it only when it was full. Writes 1,000 frames of
85 bytes (a hello-world REQUEST), each read by the peer, on a socketpair
and on a pipe, and prints the edges seen.

    python3 bench/epollout.py
"""

import os
import select
import socket


def edges(kind, writes=1000, size=85):
    if kind == "socketpair":
        a, b = socket.socketpair()
        wfd, rfd, keep = a.fileno(), b.fileno(), (a, b)
    else:
        rfd, wfd = os.pipe()
        keep = ()
    os.set_blocking(wfd, False)
    ep = select.epoll()
    ep.register(wfd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
    ep.poll(0)  # the edge of the registration itself
    seen = 0
    for _ in range(writes):
        os.write(wfd, b"x" * size)
        seen += len(ep.poll(0))
        os.read(rfd, 4096)  # the peer takes the frame
        seen += len(ep.poll(0))
    ep.close()
    del keep
    return seen


if __name__ == "__main__":
    for kind in ("socketpair", "pipe"):
        print("%-10s %d EPOLLOUT edges on the writer for 1000 writes read by the peer" % (kind, edges(kind)))
