"""A participant written in Python from openapi/participant.yaml alone, with the standard
library only: a shipping service that holds room for parcels on a van.

    POST   /shipments        try: {"parcel": "P-1", "weight_kg": 2.5} -> 201 + link
    PUT    /shipments/{id}   confirm
    DELETE /shipments/{id}   cancel

Each rule of the contract, as this service keeps it:
- a try repeated with the same Idempotency-Key and body gets the same link (200), also while
  the first is still being worked on (one lock around looking the key up and holding);
- the same key with another body is refused (422) and the first hold stays;
- confirm and cancel are idempotent; a cancel after a confirm is refused (409); a confirm
  after a cancel or after expiry answers 410; a link never handed out answers 404;
- a hold expires `--hold-secs` after the try, never later than TCC-Deadline plus `--margin-secs`,
  and is released then by a sweeper.

Run: python3 tests/python/shipping_participant.py --port-file /tmp/shipping.port
CI checks it with tcc-participant-check (.ci/participant-check.sh).
"""

import argparse
import json
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VAN_CAPACITY_KG = 1000.0


def now():
    return datetime.now(timezone.utc)


def rfc3339(instant):
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Van:
    """The holds, under one lock: a try looks its key up and holds in one step."""

    def __init__(self, hold_secs, margin_secs):
        self.lock = threading.Lock()
        self.hold = timedelta(seconds=hold_secs)
        self.margin = timedelta(seconds=margin_secs)
        self.holds = {}  # id -> {"state", "expires", "body", "key"}
        self.keys = {}  # idempotency key -> hold id
        self.loaded_kg = 0.0

    def try_hold(self, key, body, deadline):
        """(status, hold id or problem detail)."""
        with self.lock:
            self._expire_due()
            known = self.keys.get(key)
            if known is not None:
                if self.holds[known]["body"] != body:
                    return 422, "this Idempotency-Key was used with another body"
                return 200, known
            expires = now() + self.hold
            if deadline is not None:
                expires = min(expires, deadline + self.margin)
            if expires <= now():
                return 409, "the reservation's deadline has passed"
            if self.loaded_kg + body["weight_kg"] > VAN_CAPACITY_KG:
                return 409, "the van is full"
            hold_id = uuid.uuid4().hex
            self.loaded_kg += body["weight_kg"]
            self.holds[hold_id] = {"state": "held", "expires": expires, "body": body, "key": key}
            self.keys[key] = hold_id
            return 201, hold_id

    def confirm(self, hold_id):
        with self.lock:
            self._expire_due()
            hold = self.holds.get(hold_id)
            if hold is None:
                return 404
            if hold["state"] in ("held", "confirmed"):
                hold["state"] = "confirmed"
                return 204
            return 410  # cancelled or expired

    def cancel(self, hold_id):
        with self.lock:
            self._expire_due()
            hold = self.holds.get(hold_id)
            if hold is None:
                return 404
            if hold["state"] == "confirmed":
                return 409
            if hold["state"] == "held":
                self._release(hold, "cancelled")
            return 204

    def expires(self, hold_id):
        with self.lock:
            return self.holds[hold_id]["expires"]

    def sweep(self):
        with self.lock:
            self._expire_due()

    def _expire_due(self):
        moment = now()
        for hold in self.holds.values():
            if hold["state"] == "held" and hold["expires"] <= moment:
                self._release(hold, "expired")

    def _release(self, hold, state):
        hold["state"] = state
        self.loaded_kg -= hold["body"]["weight_kg"]


def read_shipment(raw):
    """The try's body, or (None, problem) naming the field that is wrong."""
    try:
        body = json.loads(raw or b"null")
    except ValueError as e:
        return None, ("$", f"the body is not JSON: {e}")
    if not isinstance(body, dict):
        return None, ("$", "the body is a JSON object")
    if not isinstance(body.get("parcel"), str) or not body["parcel"]:
        return None, ("$.parcel", "parcel is a non-empty string")
    weight = body.get("weight_kg")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        return None, ("$.weight_kg", "weight_kg is a positive number")
    unknown = sorted(set(body) - {"parcel", "weight_kg"})
    if unknown:
        return None, (f"$.{unknown[0]}", f"unknown field {unknown[0]}")
    return body, None


class Handler(BaseHTTPRequestHandler):
    van = None  # set by main
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the checker's report says what happened
        pass

    def answer(self, status, body=None, content_type="application/json", headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def problem(self, status, title, detail, field=None):
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        if field:
            body["field"] = field
        self.answer(status, body, "application/problem+json")

    def hold_id(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "shipments":
            return parts[1]
        return None

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/shipments":
            return self.problem(404, "Not found", f"nothing at {self.path}")
        key = self.headers.get("Idempotency-Key")
        if not key:
            return self.problem(400, "Bad request", "the Idempotency-Key header is missing")
        deadline = None
        if self.headers.get("TCC-Deadline"):
            try:
                deadline = datetime.fromisoformat(self.headers["TCC-Deadline"])
            except ValueError:
                return self.problem(400, "Bad request", "TCC-Deadline is not an RFC 3339 time")
        body, wrong = read_shipment(raw)
        if wrong:
            field, detail = wrong
            return self.problem(422, "Invalid shipment", detail, field)
        status, found = self.van.try_hold(key, body, deadline)
        if status >= 400:
            return self.problem(status, "Refused", found)
        host = self.headers.get("Host", "127.0.0.1")
        uri = f"http://{host}/shipments/{found}"
        link = {"uri": uri, "expires": rfc3339(self.van.expires(found))}
        self.answer(status, link, headers=[("Location", uri)])

    def do_PUT(self):
        self.decide(self.van.confirm)

    def do_DELETE(self):
        self.decide(self.van.cancel)

    def decide(self, verb):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hold_id = self.hold_id()
        status = verb(hold_id) if hold_id else 404
        if status == 204:
            return self.answer(204)
        words = {404: "no such shipment", 409: "confirmed: it stays confirmed",
                 410: "cancelled or expired"}
        self.problem(status, "Not done", words[status])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    parser.add_argument("--port-file", help="write the port here once serving")
    parser.add_argument("--hold-secs", type=float, default=60, help="how long a hold lives")
    parser.add_argument("--margin-secs", type=float, default=5,
                        help="how long a hold may outlive TCC-Deadline")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Handler.van = Van(args.hold_secs, args.margin_secs)
    server = ThreadingHTTPServer((host, int(port)), Handler)

    def sweeper():
        while True:
            time.sleep(0.25)
            Handler.van.sweep()

    threading.Thread(target=sweeper, daemon=True).start()
    if args.port_file:
        partial = args.port_file + ".partial"
        with open(partial, "w") as f:
            f.write(str(server.server_port))
        os.replace(partial, args.port_file)
    print(f"shipping participant on http://{host}:{server.server_port} (tries: POST /shipments)",
          flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
