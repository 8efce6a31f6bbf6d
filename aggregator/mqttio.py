"""paho-mqtt client tuned for a high-rate subscriber with manual acknowledgements.

Profiled under the cartd bench, paho's network thread used ~40 % of cartd's CPU (and shares the
GIL with the worker). Per incoming PUBLISH stock paho 2.x does a ``select()``, then one ``recv(1)``
for the command byte, one ``recv(1)`` per remaining-length byte and one ``recv`` for the body:
four to five system calls and a full pass through ``_loop`` per message, because ``loop_read``
reads only one packet per wake-up when there are no QoS 2 messages. Each manual ``ack()`` queues
one PUBACK, wakes the network thread through its socket pair and is written with its own
``send()``.

``FastClient`` changes only the I/O around paho's own packet handling:

- the socket is read in 64 KiB chunks through ``_BufferedSocket`` (its ``pending()`` tells paho's
  loop that bytes are waiting, the same hook paho uses for TLS records);
- ``loop_read`` handles every complete packet already buffered, not one per ``select()``;
- ``ack_many`` queues the PUBACKs of a whole committed burst as one write (the same bytes paho's
  ``ack`` would send, one after another).

It relies on paho internals (``_create_socket``, ``_packet_read``, ``_loop_rc_handle``,
``_packet_queue``) of paho-mqtt 2.x; when they are missing it behaves like a plain paho client.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

_READ = 65536
_HOOKS = all(hasattr(paho.Client, n) for n in ("_create_socket", "_packet_read", "_loop_rc_handle", "_packet_queue"))


class _BufferedSocket:
    """A socket (or TLS socket) whose ``recv`` is served from 64 KiB reads; everything else is
    the wrapped socket's."""

    def __init__(self, sock: Any):
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(_READ)  # BlockingIOError / SSLWantReadError propagate to paho
            if len(data) <= n:
                self._buf, self._pos = b"", 0
                return data
            self._buf, self._pos = data, 0
        p = self._pos
        out = self._buf[p:p + n]
        self._pos = p + len(out)
        return out

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastClient(paho.Client):
    def _create_socket(self) -> paho.SocketLike:
        sock = super()._create_socket()
        if self._transport == "websockets":
            return sock
        return _BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if not _HOOKS or not isinstance(self._sock, _BufferedSocket):
            return super().loop_read(max_packets)
        for _ in range(10000):  # bounded: writes (acks, pings) get their turn
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            sock = self._sock
            if not isinstance(sock, _BufferedSocket) or sock.buffered() == 0:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Iterable[int]) -> None:
        """PUBACK (QoS 1, success) for every mid, queued as one write."""
        mids = list(mids)
        if not mids:
            return
        if not _HOOKS or not self._manual_ack:
            for mid in mids:
                self.ack(mid, 1)
            return
        # Exactly what paho's _send_puback writes per message: fixed header 0x40, length 2, mid
        # (MQTT 5 allows omitting reason code 0 and the properties).
        pkt = b"".join([struct.pack("!BBH", paho.PUBACK, 2, mid) for mid in mids])
        self._packet_queue(paho.PUBACK, pkt, 0, 0)
