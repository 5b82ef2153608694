"""A minimal HTTP server. Cove gives every workspace its own $PORT and shows
it in the preview pane."""

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT = int(os.environ.get("PORT", "3000"))


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"Hello from Python {sys.version.split()[0]} on port {PORT}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    print(f"listening on http://localhost:{PORT}", flush=True)
    HTTPServer(("127.0.0.1", PORT), Hello).serve_forever()
