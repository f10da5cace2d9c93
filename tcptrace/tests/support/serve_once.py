"""Accepts one connection on HOST PORT, waits for its peer to close, closes, prints "done"
(prints "listening" first). For the namespace tests' peer across a veth pair."""
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen()
print("listening", flush=True)
conn = listener.accept()[0]
conn.recv(1)
conn.close()
print("done", flush=True)
