"""End-to-end chat through Ember's messaging core with paho-mqtt, a client nobody here wrote,
speaking only what docs/PROTOCOL.md says. The admin calls use Python's standard library.

Usage: chat.py MQTT_HOST:PORT WS_HOST:PORT ADMIN_URL ADMIN_SECRET SCENARIO...
Scenarios: pair, group, offline, devices, websocket, takeover (default: all).
Exits non-zero with a message on the first failed expectation.
"""

import hashlib
import hmac
import json
import queue
import secrets
import sys
import time
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 10.0


def fail(msg):
    print("FAIL:", msg, flush=True)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


class Admin:
    """Signed admin API calls (Ember-HMAC-SHA256, docs/PROTOCOL.md)."""

    def __init__(self, url, secret):
        self.url = url.rstrip("/")
        self.secret = secret.encode()

    def call(self, method, path, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        ts = str(int(time.time() * 1000))
        nonce = secrets.token_hex(16)
        canonical = "\n".join(
            ["EMBER-HMAC-SHA256", method, path, ts, nonce, hashlib.sha256(data).hexdigest()]
        )
        sig = hmac.new(self.secret, canonical.encode(), hashlib.sha256).hexdigest()
        req = urllib.request.Request(self.url + path, data=data if body is not None else None, method=method)
        req.add_header("nonce", nonce)
        req.add_header("timestamp", ts)
        req.add_header("authorization", "Ember-HMAC-SHA256 " + sig)
        if body is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                text = r.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            fail(f"admin {method} {path}: {e.code} {e.read()!r}")

    def users(self, uids):
        self.call("POST", "/v1/users", {"users": [{"uid": u, "name": u} for u in uids]})

    def token(self, uid, device):
        return self.call("POST", f"/v1/users/{uid}/tokens", {"device": device})["token"]

    def group(self, gid, owner, members):
        self.call("POST", "/v1/groups", {"gid": gid, "name": gid, "owner": owner, "members": members})


class Client:
    """One device: connects, subscribes to its own space, sends requests, collects events."""

    def __init__(self, admin, host, port, user, device, v5=True, transport="tcp"):
        self.user, self.device, self.v5 = user, device, v5
        self.events = queue.Queue()
        self.responses = queue.Queue()
        self.disconnect_reason = queue.Queue()
        self.n = 0
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device,
            protocol=proto,
            transport=transport,
            reconnect_on_failure=False,
        )
        self.c.username_pw_set(user, admin.token(user, device))
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        connected = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p=None: connected.put(rc)
        subscribed = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rcs, p=None: subscribed.put(rcs)
        self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        rc = connected.get(timeout=TIMEOUT)
        expect(not rc.is_failure, f"{user}/{device}: CONNACK {rc}")
        self.c.subscribe(f"u/{user}/{device}/#", qos=1)
        rcs = subscribed.get(timeout=TIMEOUT)
        expect(all(not r.is_failure for r in rcs), f"{user}/{device}: SUBACK {rcs}")

    def _on_message(self, c, u, msg):
        body = json.loads(msg.payload)
        if msg.topic.endswith("/ev"):
            self.events.put(body)
        else:
            corr = None
            if self.v5 and msg.properties is not None and hasattr(msg.properties, "CorrelationData"):
                corr = msg.properties.CorrelationData
            self.responses.put((corr, body))

    def _on_disconnect(self, c, u, flags, rc, p=None):
        self.disconnect_reason.put(rc)

    def request(self, method, payload):
        """Sends rq/<method> with QoS 1 and returns the response (matched by id/correlation)."""
        self.n += 1
        rid = f"r{self.n}"
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"u/{self.user}/{self.device}/rs"
            props.CorrelationData = rid.encode()
        else:
            payload = dict(payload, id=rid)
        info = self.c.publish(f"rq/{method}", json.dumps(payload), qos=1, properties=props)
        info.wait_for_publish(timeout=TIMEOUT)
        expect(info.is_published(), f"{self.user}: {method} not acknowledged")
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            corr, body = self.responses.get(timeout=max(0.01, deadline - time.time()))
            if (self.v5 and corr == rid.encode()) or (not self.v5 and body.get("id") == rid):
                return body
        fail(f"{self.user}: no response to {method}")

    def ok(self, method, payload):
        r = self.request(method, payload)
        expect(r.get("code") == 0, f"{self.user}: {method} {payload} -> {r}")
        return r

    def event(self, what):
        try:
            return self.events.get(timeout=TIMEOUT)
        except queue.Empty:
            fail(f"{self.user}/{self.device}: no event ({what})")

    def no_event(self, secs=0.5):
        try:
            ev = self.events.get(timeout=secs)
            fail(f"{self.user}/{self.device}: unexpected event {ev}")
        except queue.Empty:
            pass

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def pair(admin, host, port, **_):
    admin.users(["alice", "bob"])
    alice = Client(admin, host, port, "alice", "phone", v5=True)
    bob = Client(admin, host, port, "bob", "phone", v5=False)
    r = alice.ok("send", {"to": "bob", "cid": "c1", "body": {"text": "hi bob"}})
    expect(r["mid"] > 0 and r["seq"] >= 1, f"send result {r}")
    ev = bob.event("alice's message")
    expect(ev["k"] == "msg" and ev["from"] == "alice" and ev["body"] == {"text": "hi bob"}, f"event {ev}")
    expect(ev["mid"] == r["mid"] and ev["tl"] == "u", f"event {ev} vs {r}")
    r2 = bob.ok("send", {"to": "alice", "cid": "c2", "body": {"text": "hi alice"}})
    ev = alice.event("bob's reply")
    expect(ev["from"] == "bob" and ev["body"] == {"text": "hi alice"} and ev["mid"] == r2["mid"], f"{ev}")
    # A resend with the same cid is not stored twice.
    again = alice.ok("send", {"to": "bob", "cid": "c1", "body": {"text": "hi bob"}})
    expect(again["mid"] == r["mid"], f"dedupe: {again} vs {r}")
    bob.no_event()
    # History, newest first.
    h = alice.ok("history", {"peer": "bob", "limit": 10})
    expect([e["mid"] for e in h["events"]] == [r2["mid"], r["mid"]], f"history {h}")
    # Recall.
    rc = alice.ok("recall", {"mid": r["mid"]})
    ev = bob.event("recall")
    expect(ev["k"] == "recall" and ev["ref"] == r["mid"], f"recall event {ev}")
    # Errors: a user who does not exist, a malformed request.
    e = alice.request("send", {"to": "nobody", "cid": "c3", "body": 1})
    expect(e["code"] == 404, f"send to unknown user: {e}")
    e = alice.request("send", {"to": "bob"})
    expect(e["code"] == 400, f"malformed send: {e}")
    del rc
    alice.close()
    bob.close()
    print("pair ok")


def group(admin, host, port, **_):
    users = [f"g{i:02}" for i in range(50)]
    admin.users(users)
    admin.group("fifty", users[0], users)
    clients = [Client(admin, host, port, u, "d1", v5=(i % 2 == 0)) for i, u in enumerate(users)]
    # Membership notices arrive first for those online; drain them.
    time.sleep(0.3)
    for c in clients:
        while not c.events.empty():
            c.events.get()
    r = clients[7].ok("send", {"g": "fifty", "cid": "x", "body": {"text": "hello all"}})
    for i, c in enumerate(clients):
        if i == 7:
            continue
        ev = c.event("group message")
        expect(ev["tl"] == "g" and ev["g"] == "fifty" and ev["seq"] == r["seq"], f"{c.user}: {ev}")
        expect(ev["body"] == {"text": "hello all"} and ev["from"] == users[7], f"{ev}")
    clients[7].no_event(0.2)
    p = clients[3].ok("pull", {"g": "fifty", "after": 0, "limit": 100})
    expect(any(e.get("mid") == r["mid"] for e in p["events"]), f"pull {p}")
    # A non-member may not send to the group.
    admin.users(["outsider"])
    o = Client(admin, host, port, "outsider", "d1")
    e = o.request("send", {"g": "fifty", "cid": "y", "body": 1})
    expect(e["code"] == 403, f"non-member send: {e}")
    for c in clients + [o]:
        c.close()
    print("group ok")


def offline(admin, host, port, **_):
    admin.users(["carol", "dave"])
    carol = Client(admin, host, port, "carol", "phone")
    dave = Client(admin, host, port, "dave", "phone")
    s = dave.ok("sync", {"seq": 0, "limit": 100})
    cursor = s["seq"] or 0
    dave.close()
    mids = [carol.ok("send", {"to": "dave", "cid": f"o{i}", "body": {"n": i}})["mid"] for i in range(5)]
    dave = Client(admin, host, port, "dave", "phone")
    got = []
    for _ in range(10):
        page = dave.ok("sync", {"seq": cursor, "limit": 2})
        expect(len(page["events"]) <= 2, f"page larger than limit: {page}")
        got += page["events"]
        if page["events"]:
            cursor = page["seq"]
        if not page["more"]:
            break
    expect([e["mid"] for e in got] == mids, f"synced {got} expected {mids}")
    seqs = [e["seq"] for e in got]
    expect(seqs == sorted(seqs) and len(set(seqs)) == 5, f"seqs {seqs}")
    carol.close()
    dave.close()
    print("offline ok")


def devices(admin, host, port, **_):
    admin.users(["erin", "frank"])
    phone = Client(admin, host, port, "erin", "phone")
    pc = Client(admin, host, port, "erin", "pc", v5=False)
    frank = Client(admin, host, port, "frank", "tablet")
    r = phone.ok("send", {"to": "frank", "cid": "m1", "body": "from the phone"})
    ev = pc.event("own message on the other device")
    expect(ev["mid"] == r["mid"] and ev["from"] == "erin", f"{ev}")
    ev = frank.event("message")
    expect(ev["mid"] == r["mid"], f"{ev}")
    phone.no_event(0.3)
    frank.ok("send", {"to": "erin", "cid": "m2", "body": "to both"})
    expect(phone.event("reply on phone")["body"] == "to both", "phone")
    expect(pc.event("reply on pc")["body"] == "to both", "pc")
    for c in (phone, pc, frank):
        c.close()
    print("devices ok")


def websocket(admin, host, port, ws_host, ws_port, **_):
    admin.users(["wsuser", "tcpuser"])
    w = Client(admin, ws_host, ws_port, "wsuser", "browser", transport="websockets")
    t = Client(admin, host, port, "tcpuser", "phone")
    t.ok("send", {"to": "wsuser", "cid": "w1", "body": {"via": "tcp"}})
    expect(w.event("over websocket")["body"] == {"via": "tcp"}, "ws event")
    w.ok("send", {"to": "tcpuser", "cid": "w2", "body": {"via": "ws"}})
    expect(t.event("from websocket")["body"] == {"via": "ws"}, "tcp event")
    w.close()
    t.close()
    print("websocket ok")


def takeover(admin, host, port, **_):
    admin.users(["gina"])
    first = Client(admin, host, port, "gina", "phone")
    second = Client(admin, host, port, "gina", "phone")
    rc = first.disconnect_reason.get(timeout=TIMEOUT)
    expect(rc.value == 0x8E, f"first connection closed with {rc}, want 0x8E session taken over")
    second.ok("sync", {"seq": 0})
    second.close()
    first.c.loop_stop()
    print("takeover ok")


SCENARIOS = {
    "pair": pair,
    "group": group,
    "offline": offline,
    "devices": devices,
    "websocket": websocket,
    "takeover": takeover,
}


def main():
    if len(sys.argv) < 5:
        fail(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    ws_host, ws_port = sys.argv[2].rsplit(":", 1)
    admin = Admin(sys.argv[3], sys.argv[4])
    names = sys.argv[5:] or list(SCENARIOS)
    for name in names:
        SCENARIOS[name](admin, host, int(port), ws_host=ws_host, ws_port=int(ws_port))
    print("all ok")


if __name__ == "__main__":
    main()
