"""A TCP relay between the carrier and the test sshd that a test can cut:
``down()`` drops every relayed connection and refuses new ones (the network
is gone), ``up()`` lets connections through again; ``cut_each_after(N,
times)`` drops each connection made from then on once N bytes have come from
the server over it, TIMES times in all (a drop mid-download, placed by
bytes, not by time); ``hold_each_after(N, reached)`` stalls such connections
at N bytes instead (nothing more passes until close) and sets REACHED;
``down(cut=False)`` refuses new connections but
leaves the open ones alone; ``hold()``/``release()`` stop and restart
relaying what the server sends (the client's bytes still flow);
``listen=False`` reserves the port but refuses connections until
``listen()`` (a server that is not up yet).
Threads only, stdlib only."""

from __future__ import annotations

import contextlib
import socket
import threading


class NetProxy:
    """Listens on 127.0.0.1:port and relays each connection to TARGET_PORT."""

    def __init__(self, target_port: int, listen: bool = True) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.refused = 0  # connections reset while down()
        self._up = True
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._cut_after = 0
        self._cuts_left = 0
        self._cut_from = 0  # the first connection (by number) that may be cut
        self.cuts = 0  # connections dropped by cut_each_after
        self._hold_after = 0
        self._hold_from = 0
        self._held = threading.Event()  # set once a connection stalls at the mark
        self._released = threading.Event()  # set by close(): stalled pumps end
        self._flowing = threading.Event()  # cleared while hold() stops the server's bytes
        self._flowing.set()
        if listen:
            self.listen()

    def listen(self) -> None:
        """Start accepting connections (a bound socket that does not listen
        refuses them: ECONNREFUSED, as a port nobody listens on)."""
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        """Stop relaying what the server sends, on every connection, until release()."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def hold_each_after(self, downstream: int, reached: threading.Event) -> None:
        """Stall each connection made from now on once DOWNSTREAM bytes came
        from the server over it (a server that stops sending); set REACHED
        when one does."""
        with self._lock:
            self._hold_after = downstream
            self._hold_from = self.accepted + 1
            self._held = reached

    def cut_each_after(self, downstream: int, times: int) -> None:
        """Drop each connection made from now on once DOWNSTREAM bytes came
        from the server over it, until TIMES connections were dropped."""
        with self._lock:
            self._cut_after = downstream
            self._cuts_left = times
            self._cut_from = self.accepted + 1

    def down(self, cut: bool = True) -> None:
        """Refuse new connections until up(); CUT: and cut every relayed one."""
        with self._lock:
            self._up = False
            for sock in self._sockets if cut else ():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            if cut:
                self._sockets.clear()

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self._released.set()
        self._flowing.set()
        self.down()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    self.refused += 1
                    # A closed door: the connection is reset at once.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    client.close()
                    continue
                try:
                    server = socket.create_connection(("127.0.0.1", self.target_port))
                except OSError:
                    client.close()
                    continue
                self.accepted += 1
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.accepted), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, number: int = 0) -> None:
        """Relay SOURCE to SINK; NUMBER is the connection's number when this is
        its server-to-client direction (0 for the other one)."""
        relayed = 0
        try:
            while True:
                data = source.recv(262144)
                if not data:
                    break
                if number and self._hold_here(number, relayed, len(data)):
                    sink.sendall(data[: self._hold_after - relayed])
                    self._held.set()
                    self._released.wait()
                    return
                if number:
                    self._flowing.wait()
                if number and self._cut_here(number, relayed, len(data)):
                    data = data[: self._cut_after - relayed]
                    sink.sendall(data)
                    for sock in (source, sink):
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                sink.sendall(data)
                relayed += len(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _cut_here(self, number: int, relayed: int, coming: int) -> bool:
        """Given a connection's number, what it relayed from the server and
        what comes next, return whether it is dropped now (counting the cut)."""
        with self._lock:
            if self._cuts_left and number >= self._cut_from and (
                relayed < self._cut_after <= relayed + coming
            ):
                self._cuts_left -= 1
                self.cuts += 1
                return True
        return False

    def _hold_here(self, number: int, relayed: int, coming: int) -> bool:
        """Given a connection's number, what it relayed from the server and
        what comes next, return whether it stalls now."""
        with self._lock:
            return bool(self._hold_after) and number >= self._hold_from and (
                relayed < self._hold_after <= relayed + coming
            )
