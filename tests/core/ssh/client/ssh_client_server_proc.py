"""A plain asyncssh server in its own process (so a test can SIGSTOP it): prints ``PORT <n>``, serves forever.

Usage: python ssh_client_server_proc.py <host key file> <authorized_keys file>
"""

from __future__ import annotations

import asyncio
import sys

import asyncssh

from alknet.core.transport.base import AcceptorServer
from alknet.core.transport.tcp import TcpAcceptor


class _Server(asyncssh.SSHServer):
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return True


async def main(host_key: str, authorized_keys: str) -> None:
    server = await asyncssh.listen(
        tunnel=AcceptorServer(TcpAcceptor("127.0.0.1", 0)),
        server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
        server_factory=_Server,
        config=None,
    )
    print(f"PORT {server.get_port()}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
