"""Relay one guest connection to a service on 127.0.0.1 (qemu ``guestfwd=...-cmd:``).

qemu's user network runs this once per connection the guest opens to a
guest-forwarded address, with the connection on stdin/stdout; it connects to
``127.0.0.1:PORT`` on the host and copies bytes both ways until either side
closes. This is how a node under qemu (``restrict=on``: it reaches nothing
else) talks to the update server and the fleet controller on the host.
Standard library only; ``python -m atoll.tools.relay PORT``.
"""

from __future__ import annotations

import selectors
import socket
import sys


def relay(port: int) -> None:
    guest = socket.socket(fileno=0)
    host = socket.create_connection(("127.0.0.1", port), timeout=10)
    host.settimeout(None)
    selector = selectors.DefaultSelector()
    selector.register(guest, selectors.EVENT_READ, host)
    selector.register(host, selectors.EVENT_READ, guest)
    open_sides = 2
    while open_sides:
        for key, _ in selector.select():
            source: socket.socket = key.fileobj  # type: ignore[assignment]
            target: socket.socket = key.data
            data = source.recv(65536)
            if data:
                target.sendall(data)
                continue
            # One side closed: pass the end of stream on, keep reading the other.
            selector.unregister(source)
            open_sides -= 1
            try:
                target.shutdown(socket.SHUT_WR)
            except OSError:
                open_sides = 0
    host.close()


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m atoll.tools.relay PORT", file=sys.stderr)
        return 2
    try:
        relay(int(sys.argv[1]))
    except OSError as e:
        print(f"atoll relay to 127.0.0.1:{sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
