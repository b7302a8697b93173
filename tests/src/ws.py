#!/usr/bin/env python3
"""A real WebSocket server and client (Debian's python3-websockets) for the checker's tests.

  ws.py serve PORT
      Echoes every message back on 127.0.0.1:PORT; prints "ready" once listening.
  ws.py talk PORT CA PATH [--from IP] MESSAGE...
      Opens wss://api.test:PORT/PATH through 127.0.0.1 trusting only CA, sends each MESSAGE
      (a number N sends N bytes; sleep:S waits S seconds) and prints "echo LENGTH TEXT" for each answer, then "done";
      "status NNN" when the upgrade is refused, "closed" when the connection is closed.
"""
import asyncio
import socket
import ssl
import sys

import websockets


async def serve(port):
    async def echo(ws, path=None):
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", port):
        print("ready", flush=True)
        await asyncio.Future()


async def talk(port, ca, path, messages, headers):
    ctx = ssl.create_default_context(cafile=ca)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(None)
    try:
        async with websockets.connect(
            f"wss://api.test:{port}{path}",
            ssl=ctx,
            sock=sock,
            server_hostname="api.test",
            extra_headers=headers,
            # Bytes on the wire as sent: no permessage-deflate.
            compression=None,
            open_timeout=5,
            close_timeout=2,
        ) as ws:
            for m in messages:
                if m.startswith("sleep:"):
                    await asyncio.sleep(float(m[6:]))
                    continue
                await ws.send("x" * int(m) if m.isdigit() else m)
                answer = await asyncio.wait_for(ws.recv(), 5)
                print("echo", len(answer), answer[:40], flush=True)
    except websockets.exceptions.InvalidStatusCode as e:
        print("status", e.status_code)
        return
    except websockets.exceptions.ConnectionClosed:
        print("closed")
        return
    print("done")


def main(argv):
    if argv[1] == "serve":
        asyncio.run(serve(int(argv[2])))
        return
    port, ca, path, rest = int(argv[2]), argv[3], argv[4], argv[5:]
    headers = []
    if rest[:1] == ["--from"]:
        headers.append(("X-Forwarded-For", rest[1]))
        rest = rest[2:]
    asyncio.run(talk(port, ca, path, rest, headers))


if __name__ == "__main__":
    main(sys.argv)
