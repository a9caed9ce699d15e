"""A real local HTTP server speaking the Electricity Maps v3, UK Carbon Intensity and ipinfo
shapes, with switchable failures. Started in a thread by the tests."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TOKEN = "secret-token-123"


class State:
    def __init__(self):
        self.mode = {}  # path prefix -> "401" | "429" | "500" | "timeout" | "malformed" | "missing"
        self.fail_times = {}  # path prefix -> how many times to fail before succeeding
        self.requests = []
        self.em_history = []
        self.uk_points = []
        self.geo = {"ip": "203.0.113.7", "country": "US", "region": "California"}


def make_handler(state):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send(self, code, body, raw=False, headers=None):
            data = body.encode() if raw else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            u = urlparse(self.path)
            state.requests.append((u.path, dict(self.headers)))
            for prefix, mode in state.mode.items():
                if u.path.startswith(prefix):
                    left = state.fail_times.get(prefix)
                    if left is not None:
                        if left <= 0:
                            break
                        state.fail_times[prefix] = left - 1
                    if mode == "401":
                        return self.send(401, {"message": "Access denied"})
                    if mode == "429":
                        return self.send(429, {"message": "Too many requests"}, headers={"Retry-After": "0"})
                    if mode == "500":
                        return self.send(500, {"error": {"code": "500 Internal Server Error", "message": "boom"}})
                    if mode == "timeout":
                        time.sleep(0.5)
                        return self.send(200, {})
                    if mode == "malformed":
                        return self.send(200, "{not json", raw=True)
                    if mode == "missing":
                        return self.send(200, {"zone": "DE", "history": [{"datetime": "2026-11-21T10:00:00.000Z"}]})
            if u.path.startswith("/v3/"):
                if self.headers.get("auth-token") != TOKEN:
                    return self.send(401, {"message": "Access denied: no auth-token"})
                zone = parse_qs(u.query).get("zone", ["?"])[0]
                if u.path == "/v3/carbon-intensity/history":
                    return self.send(200, {"zone": zone, "history": state.em_history})
                if u.path == "/v3/carbon-intensity/latest":
                    return self.send(200, {"zone": zone, "carbonIntensity": 300, "datetime": "2026-11-21T23:00:00.000Z",
                                           "emissionFactorType": "lifecycle", "isEstimated": True, "estimationMethod": "TIME_SLICER_AVERAGE"})
                if u.path == "/v3/carbon-intensity/past-range":
                    return self.send(200, {"zone": zone, "data": state.em_history})
            if u.path.startswith("/intensity/"):
                parts = u.path.split("/")
                if len(parts) != 4:
                    return self.send(400, {"error": {"code": "400 Bad Request", "message": "Invalid date range"}})
                return self.send(200, {"data": state.uk_points})
            if u.path.startswith("/regional/intensity/"):
                return self.send(200, {"data": {"regionid": 13, "shortname": "London", "data": state.uk_points}})
            if u.path == "/json":
                return self.send(200, state.geo)
            return self.send(404, {"message": "not found"})

    return H


class CarbonServer:
    def __init__(self):
        self.state = State()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
