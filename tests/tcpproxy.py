"""A TCP proxy that tests can cut and restore (a real network fault).

    python tests/tcpproxy.py TARGET_PORT

Listens on a free loopback port (printed as ``proxy listening on PORT``) and
relays every connection to 127.0.0.1:TARGET_PORT.  Signals:

  - SIGUSR1 (cut): close every connection and refuse new ones;
  - SIGHUP (stall): stop relaying in both directions, sockets kept open (a
    partition: TCP holds the bytes, nothing is lost or closed);
  - SIGUSR2 (restore): accept and relay again.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys


class Proxy:
    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.relisten: asyncio.Future[None] | None = None

    async def listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self.server = await asyncio.start_server(self.accept, sock=sock)

    async def accept(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))
        await asyncio.gather(
            self.pipe(reader, up_writer), self.pipe(up_reader, writer),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self.writers.discard(w)
            w.close()

    async def pipe(self, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        while True:
            await self.flowing.wait()
            data = await reader.read(65536)
            if not data:
                break
            await self.flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.close()

    def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    def stall(self) -> None:
        self.flowing.clear()

    def restore(self) -> None:
        self.flowing.set()
        if self.server is None:
            self.relisten = asyncio.ensure_future(self.listen())


async def main() -> None:
    proxy = Proxy(int(sys.argv[1]))
    await proxy.listen()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
    loop.add_signal_handler(signal.SIGHUP, proxy.stall)
    loop.add_signal_handler(signal.SIGUSR2, proxy.restore)
    print(f"proxy listening on {proxy.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
