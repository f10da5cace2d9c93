"""Runs inside a test-made network namespace: COUNT connections to a server on 127.0.0.1
that closes first (each leaves a TIME-WAIT on the server's side), then REFUSED connects
to a port nothing listens on. With "client-first", the clients close first instead, each
from a new ephemeral port (each leaves a TIME-WAIT on its client port). Prints "done".
"""
import socket
import sys

count, refused, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 18530))
server.listen(128)
for _ in range(count):
    client = socket.create_connection(("127.0.0.1", 18530))
    accepted, _ = server.accept()
    first, second = (client, accepted) if mode == "client-first" else (accepted, client)
    first.close()
    second.recv(1)
    second.close()
for _ in range(refused):
    try:
        socket.create_connection(("127.0.0.1", 18531))
    except ConnectionRefusedError:
        pass
print("done", flush=True)
