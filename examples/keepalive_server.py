"""`python3 -m http.server`, but speaking HTTP/1.1 with keep-alive: the server no longer
closes after its response, so the client (curl, when it exits) closes first.

usage: python3 examples/keepalive_server.py [PORT]   (default 8081)
"""
import http.server
import sys

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
http.server.test(
    HandlerClass=http.server.SimpleHTTPRequestHandler,
    ServerClass=http.server.ThreadingHTTPServer,
    protocol="HTTP/1.1",
    port=port,
    bind="127.0.0.1",
)
