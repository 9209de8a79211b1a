#!/usr/bin/env python3
"""A small fake of the Cloudflare API v4 DNS endpoints, for Gate's ACME tests.

It checks the bearer token, keeps TXT records of one zone in memory and, when
--challtestsrv is given, mirrors them into pebble-challtestsrv through its management API
(/set-txt, /clear-txt) so that Pebble's DNS-01 validation sees them.

Endpoints: GET /zones?name=, GET|POST /zones/<id>/dns_records, DELETE
/zones/<id>/dns_records/<record id>. Test controls: POST /_fake/fail with a body of an HTTP
status (e.g. "500") makes every API call fail with it; "0" turns that off. GET /_fake/records
lists all records. Prints "listening on <port>" once ready. Loopback only.
"""
import argparse
import json
import sys
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.Lock()
RECORDS = {}  # id -> {"id", "type", "name", "content", "ttl"}
FAIL = {"status": 0}
ARGS = None


def unquote(content):
    content = content.strip()
    if len(content) >= 2 and content[0] == '"' and content[-1] == '"':
        return content[1:-1]
    return content


def challtestsrv(path, payload):
    if not ARGS.challtestsrv:
        return
    req = urllib.request.Request(
        ARGS.challtestsrv.rstrip("/") + path,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as rsp:
        rsp.read()


def mirror(name):
    """Makes challtestsrv hold exactly the TXT values we hold for `name`."""
    host = name.rstrip(".") + "."
    challtestsrv("/clear-txt", {"host": host})
    for rec in RECORDS.values():
        if rec["name"] == name:
            challtestsrv("/set-txt", {"host": host, "value": unquote(rec["content"])})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-cloudflare: " + (fmt % args) + "\n")

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.reply(status, {"success": False, "errors": [{"code": code, "message": message}],
                            "messages": [], "result": None})

    def ok(self, result):
        self.reply(200, {"success": True, "errors": [], "messages": [], "result": result})

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def handle_any(self, method):
        url = urlparse(self.path)
        raw = self.body()
        if url.path == "/_fake/fail" and method == "POST":
            FAIL["status"] = int(raw.decode().strip() or "0")
            return self.ok({"fail": FAIL["status"]})
        if url.path == "/_fake/records":
            with LOCK:
                return self.ok(list(RECORDS.values()))
        path = url.path
        if path.startswith(ARGS.prefix):
            path = path[len(ARGS.prefix):]
        if self.headers.get("Authorization") != "Bearer " + ARGS.token:
            return self.error(403, 10000, "Authentication error")
        if FAIL["status"]:
            return self.error(FAIL["status"], 1000, "simulated failure")
        parts = [p for p in path.split("/") if p]
        query = parse_qs(url.query)
        if parts == ["zones"] and method == "GET":
            name = (query.get("name") or [""])[0]
            zones = [{"id": ARGS.zone_id, "name": ARGS.zone_name}] if name == ARGS.zone_name else []
            return self.ok(zones)
        if len(parts) >= 3 and parts[0] == "zones" and parts[2] == "dns_records":
            if parts[1] != ARGS.zone_id:
                return self.error(404, 7003, "Could not route to zone")
            with LOCK:
                if len(parts) == 3 and method == "GET":
                    rtype = (query.get("type") or [None])[0]
                    name = (query.get("name") or [None])[0]
                    found = [r for r in RECORDS.values()
                             if (rtype is None or r["type"] == rtype)
                             and (name is None or r["name"] == name)]
                    return self.ok(found)
                if len(parts) == 3 and method == "POST":
                    try:
                        req = json.loads(raw)
                    except ValueError:
                        return self.error(400, 9207, "Request body is invalid")
                    if req.get("type") != "TXT" or not req.get("name") or "content" not in req:
                        return self.error(400, 9000, "only TXT records with name and content")
                    rec = {"id": uuid.uuid4().hex, "type": "TXT", "name": req["name"].lower(),
                           "content": req["content"], "ttl": req.get("ttl", 1)}
                    RECORDS[rec["id"]] = rec
                    mirror(rec["name"])
                    return self.ok(rec)
                if len(parts) == 4 and method == "DELETE":
                    rec = RECORDS.pop(parts[3], None)
                    if rec is None:
                        return self.error(404, 81044, "Record does not exist.")
                    mirror(rec["name"])
                    return self.ok({"id": rec["id"]})
        return self.error(404, 7000, "No route for that URI")

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", required=True)
    parser.add_argument("--zone-id", default="zone-test")
    parser.add_argument("--zone-name", default="example.test")
    parser.add_argument("--prefix", default="/client/v4")
    parser.add_argument("--challtestsrv", default="")
    ARGS = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    print("listening on %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
