"""A server that leaks: it accepts COUNT connections on HOST PORT and never closes them.

usage: leaky_server.py HOST PORT COUNT   prints "listening", then "accepted" after COUNT
                                         connections, then holds them until stdin closes
"""
import socket
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
listener = socket.socket(family, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen()
print("listening", flush=True)
held = [listener.accept()[0] for _ in range(count)]
print("accepted", flush=True)
sys.stdin.read()
