"""Runs inside a test-made network namespace (tcp_tw_reuse=1 there).

The client closes first from a fixed port, so its side holds a TIME-WAIT; 1.2 s later it
connects again from the same port to the same server: the kernel reuses the 4-tuple and
kills that TIME-WAIT early. Prints "port <client port>" then "done".
"""
import socket
import time

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen()
server_port = server.getsockname()[1]


def connect_from(port):
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.bind(("127.0.0.1", port))
    client.connect(("127.0.0.1", server_port))
    accepted, _ = server.accept()
    return client, accepted


client, accepted = connect_from(0)
client_port = client.getsockname()[1]
print("port", client_port, server_port, flush=True)
client.close()              # the client closes first: TIME-WAIT on its port
accepted.recv(1)            # EOF
accepted.close()
time.sleep(1.2)             # tcp_tw_reuse needs a TIME-WAIT older than 1 s
client, accepted = connect_from(client_port)
client.close()
accepted.recv(1)
accepted.close()
print("done", flush=True)
