"""Sockets for `tcptrace top` to count, on 127.0.0.1 PORT.

usage: top_peer.py PORT TIME_WAITS CLOSE_WAITS
  TIME_WAITS connections the server closes first (each leaves a TIME-WAIT on PORT), then
  CLOSE_WAITS connections whose clients close and whose server never does (CLOSE_WAIT).
  Prints "ready", then holds everything until stdin closes.
"""
import socket
import sys

port, time_waits, close_waits = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen()
held = []
for _ in range(time_waits):
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()            # the server closes first: its side keeps the TIME-WAIT
    client.recv(1)              # EOF
    client.close()
for _ in range(close_waits):
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    held.append(accepted)       # never closed: CLOSE_WAIT once the client closes
    client.close()
print("ready", flush=True)
sys.stdin.read()
