"""One connection, both ends in this process, started on cue, for the namespace tests.

usage: pair.py SERVER_HOST PORT CLIENT_HOST CLIENT_PORT [connect-only]

Listens on SERVER_HOST:PORT (unless connect-only: the server is another process) and binds
a client socket to CLIENT_HOST:CLIENT_PORT, prints "ready", waits for a line on stdin,
connects (and accepts), prints "connected", waits for another line, then the client closes
first and the server after it, and prints "done".
"""
import socket
import sys

server_host, port, client_host, client_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
connect_only = len(sys.argv) > 5 and sys.argv[5] == "connect-only"
family = socket.AF_INET6 if ":" in server_host else socket.AF_INET

listener = None
if not connect_only:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server_host, port))
    listener.listen()
client = socket.socket(family, socket.SOCK_STREAM)
client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
client.bind((client_host, client_port))
print("ready", flush=True)
sys.stdin.readline()
client.connect((server_host, port))
accepted = listener.accept()[0] if listener else None
print("connected", flush=True)
sys.stdin.readline()
client.close()
if accepted:
    accepted.recv(1)  # the client's FIN
    accepted.close()
print("done", flush=True)
