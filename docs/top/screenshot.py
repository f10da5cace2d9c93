#!/usr/bin/env python3
"""Makes docs/top/top.png and docs/top/top.txt: `tcptrace top` in an 80×24 tmux window,
while a server on 127.0.0.1:8080 takes some churn and leaks a few sockets.

usage (as root, from the repository, after `cargo xtask build`):
    python3 docs/top/screenshot.py

tmux draws the screen; `capture-pane -e` gives its text with colours and attributes, which
this turns into an HTML page that headless Chromium takes a picture of.
"""
import html
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TCPTRACE = os.path.join(ROOT, "target/release/tcptrace")
PORT = 8080
SOCKET = "tcptrace-screenshot"


def tmux(*args):
    return subprocess.run(["tmux", "-L", SOCKET, *args], check=True, capture_output=True, text=True).stdout


def serve(listener, leak_every):
    """Answers and closes first (TIME-WAIT on the server), but keeps every leak_every-th."""
    kept, count = [], 0
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        count += 1
        conn.recv(1024)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        if count % leak_every == 0:
            kept.append(conn)   # never closed: CLOSE_WAIT once the client closes
        else:
            conn.close()


def churn(seconds, per_second):
    end = time.time() + seconds
    while time.time() < end:
        client = socket.create_connection(("127.0.0.1", PORT))
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        client.recv(1024)
        client.close()
        time.sleep(1 / per_second)


def ansi_to_html(text):
    """The SGR codes tmux writes: bold, reverse, and the 8/16 colours ratatui uses."""
    colours = ["#000", "#c33", "#3a3", "#cc3", "#36c", "#c3c", "#3cc", "#ccc"]
    out, state = [], {"bold": False, "reverse": False, "fg": None, "bg": None}
    open_span = False
    for part in re.split(r"(\x1b\[[0-9;]*m)", text):
        if part.startswith("\x1b["):
            codes = [int(c) if c else 0 for c in part[2:-1].split(";")]
            for code in codes:
                if code == 0:
                    state = {"bold": False, "reverse": False, "fg": None, "bg": None}
                elif code == 1:
                    state["bold"] = True
                elif code == 7:
                    state["reverse"] = True
                elif code in (22,):
                    state["bold"] = False
                elif code == 27:
                    state["reverse"] = False
                elif 30 <= code <= 37:
                    state["fg"] = colours[code - 30]
                elif code == 39:
                    state["fg"] = None
                elif 40 <= code <= 47:
                    state["bg"] = colours[code - 40]
                elif code == 49:
                    state["bg"] = None
            continue
        if not part:
            continue
        fg, bg = state["fg"] or "#e6e6e6", state["bg"] or "#1e1e1e"
        if state["reverse"]:
            fg, bg = bg, fg
        weight = "bold" if state["bold"] else "normal"
        out.append(f'<span style="color:{fg};background:{bg};font-weight:{weight}">{html.escape(part)}</span>')
    return "".join(out)


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: tcptrace top loads eBPF programs")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PORT))
    listener.listen(128)
    threading.Thread(target=serve, args=(listener, 25), daemon=True).start()
    subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True)
    tmux("new-session", "-d", "-s", "shot", "-x", "80", "-y", "24", "sh")
    try:
        tmux("send-keys", "-t", "shot", f"{TCPTRACE} top --port {PORT} --stuck-after 5", "Enter")
        time.sleep(2)
        # Captured while the churn goes on, so that the rates show it.
        load = threading.Thread(target=churn, args=(14, 40))
        load.start()
        time.sleep(12.5)
        screen = tmux("capture-pane", "-e", "-p", "-t", "shot")
        plain = tmux("capture-pane", "-p", "-t", "shot")
        load.join()
        tmux("send-keys", "-t", "shot", "q")
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "top.txt"), "w") as f:
        f.write("\n".join(line.rstrip() for line in plain.rstrip("\n").split("\n")) + "\n")
    page = (
        '<html><body style="margin:0;background:#1e1e1e">'
        '<pre style="margin:8px;font:15px/1.13 \'DejaVu Sans Mono\',monospace;color:#e6e6e6">'
        + ansi_to_html(screen.rstrip("\n"))
        + "</pre></body></html>"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".html", delete=False) as f:
        f.write(page)
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=740,425", f"--screenshot={os.path.join(here, 'top.png')}", f.name],
        check=True, capture_output=True,
    )
    os.unlink(f.name)
    print("wrote docs/top/top.png and docs/top/top.txt")


main()
