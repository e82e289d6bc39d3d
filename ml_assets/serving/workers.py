"""`--workers N`: N worker processes on one port, each accepting on a listening socket of its own.

uvicorn's own workers share one listening socket, and whichever process is woken first accepts
every connection waiting (an event loop accepts in a loop until none is left): keep-alive clients
that connect at once all land on one worker, and the others idle (31 of 32 connections went to one
of two workers in `python -m bench serving`). With SO_REUSEPORT each worker listens on a socket of
its own bound to the same port, and the kernel spreads new connections across the sockets by a
hash of each connection's addresses and ports.

Linux lets only sockets of the same user join a port's group, and only ones that ask for it (a
process without SO_REUSEPORT still gets "address in use"); another process of the same user could
join, as with any SO_REUSEPORT server.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("uvicorn.error")  # where uvicorn says what it listens on


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not listening yet (a worker listens)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class ReusePortWorkers(Multiprocess):
    """uvicorn's supervisor (it restarts a worker that dies and stops them all on SIGTERM), but every
    worker it starts gets a socket of its own: it hands each new worker `self.sockets`, made anew
    each time it is read."""

    def __init__(self, config: Config):
        # Bound first, here: a port that is taken fails now, and port 0 becomes one real port for
        # all. It never listens, so the kernel hands it no connection; it keeps the port while
        # workers come and go.
        try:
            self.port_holder = reuse_port_socket(config.host, config.port)
        except OSError as e:  # as uvicorn does when its socket can't bind
            log.error(e)
            sys.exit(STARTUP_FAILURE)
        self.port = self.port_holder.getsockname()[1]
        super().__init__(config, sockets=[])
        log.info(
            "on %s:%d, %d workers with a socket each (SO_REUSEPORT)", config.host, self.port, config.workers
        )

    @property
    def sockets(self) -> list[socket.socket]:
        # Each worker's, for its lifetime: the parent's reference ends once the worker has started.
        return [reuse_port_socket(self.config.host, self.port)]

    @sockets.setter
    def sockets(self, _ignored: list[socket.socket]) -> None:  # Multiprocess.__init__ sets it
        pass
