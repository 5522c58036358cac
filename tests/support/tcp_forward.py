"""Forward TCP connections from one loopback port to another, byte for byte.

Run as its own process (``python tcp_forward.py LISTEN_PORT TARGET_PORT``) by
``keyservice_kms.py``: the portal talks to moto_server through it, so killing this process
makes the key service unreachable (connection refused) while moto keeps its keys in memory.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until either side closes, then close both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def serve(listen_port: int, target_port: int) -> None:
    """Accept on loopback forever, one pair of pumping threads per connection."""
    # create_server sets SO_REUSEADDR: a restarted forwarder gets its port back at once.
    with socket.create_server(("127.0.0.1", listen_port)) as listener:
        while True:
            client, _ = listener.accept()
            try:
                upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
