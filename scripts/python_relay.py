#!/usr/bin/env python3
"""A minimal syncpay carrier relay, written from docs/CARRIER.md,
docs/APPROVAL.md and proto/syncpay/v1/syncpay.proto alone (no Rust source).

It hosts simulated test handsets, each with an Ed25519 key made here (the
private half never leaves this process), enrolls them, keeps one
CarrierService.Relay stream open, and follows the guide's rules: acknowledge
every delivery every time it arrives, show each trade once, sign exactly the
bytes the offer carries (after rebuilding and comparing them), answer a
redelivered offer again with the same answer while no verdict has come,
remember withdrawals, and reconnect with backoff.

  python_relay.py --server http://127.0.0.1:7700 --token-file carrier.token \\
      --handset +819000000001=approve --handset +819000000002=decline
  python_relay.py --server https://localhost:7700 --ca ca.pem \\
      --cert carrier-docomo.pem --key carrier-docomo.key --handset ...

Needs grpcio, grpcio-tools (the proto is compiled at start) and
cryptography: Debian's python3-grpcio, python3-grpc-tools and
python3-cryptography, or `pip install grpcio grpcio-tools cryptography`.
Runs until SIGTERM or Ctrl-C (or --duration seconds). Exit 0 on a clean
stop, 2 for usage errors, 4 when the server refuses an enrollment (an
unavailable server is retried with backoff).
"""

import argparse
import hashlib
import importlib
import os
import queue
import random
import signal
import struct
import sys
import tempfile
import threading
import time

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# docs/APPROVAL.md
PAYLOAD_TAG = b"syncpay/approval"
SCREEN_TAG = b"syncpay/screen"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PAYLOAD_VERSION = 2

# docs/CARRIER.md: backoff and memory.
INITIAL_BACKOFF = 0.1  # seconds, doubled on each failure
MAX_BACKOFF = 5.0
STABLE_STREAM = 30.0  # a stream up this long resets the backoff
FORGET_AFTER_MS = 15 * 60 * 1000  # remember a trade this long after its expiry
SEND_QUEUE = 256  # bounded uplink queue
UNARY_TIMEOUT = 30.0


def log(*parts):
    print("python-relay:", *parts, file=sys.stderr, flush=True)


def compile_proto(proto_root):
    """Compiles syncpay.proto with grpc_tools into a temporary folder and
    imports the generated modules."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="syncpay-proto-")
    source = os.path.join(proto_root, "syncpay", "v1", "syncpay.proto")
    status = protoc.main(
        ["grpc_tools.protoc", "-I" + proto_root, "--python_out=" + out, "--grpc_python_out=" + out, source]
    )
    if status != 0:
        raise SystemExit("python-relay: compiling %s failed (protoc exit %d)" % (source, status))
    sys.path.insert(0, out)
    pb2 = importlib.import_module("syncpay.v1.syncpay_pb2")
    pb2_grpc = importlib.import_module("syncpay.v1.syncpay_pb2_grpc")
    return pb2, pb2_grpc


# --- the approval payload (docs/APPROVAL.md) -------------------------------


def id_bytes(text, prefix):
    """The 16 bytes a trd_/reg_ id encodes: 26 Crockford base32 digits,
    most significant first, top 2 bits zero."""
    if not text.startswith(prefix) or len(text) != len(prefix) + 26:
        return None
    value = 0
    for ch in text[len(prefix):].upper():
        digit = CROCKFORD.find(ch)
        if digit < 0:
            return None
        value = (value << 5) | digit
    if value >> 128:
        return None
    return value.to_bytes(16, "big")


def screen_digest(shop_name, register_label, description):
    h = hashlib.sha256(SCREEN_TAG)
    for text in (shop_name, register_label, description):
        raw = text.encode("utf-8")
        h.update(struct.pack(">I", len(raw)))
        h.update(raw)
    return h.digest()


def rebuild_payload(offer, decision_byte):
    """The version 2 payload rebuilt from the offer's fields, or None when a
    field cannot be encoded."""
    trade = id_bytes(offer.trade_id, "trd_")
    register = id_bytes(offer.register_id, "reg_")
    shop = offer.shop_id.encode("ascii", "strict") if offer.shop_id.isascii() else None
    currency = offer.currency.encode("ascii") if offer.currency.isascii() else b""
    code = offer.binding_code.encode("ascii") if offer.binding_code.isascii() else b""
    if trade is None or register is None or shop is None or not 1 <= len(shop) <= 32:
        return None
    if len(currency) != 3 or len(code) != 6 or not code.isdigit() or offer.expires_at_ms < 0:
        return None
    return b"".join(
        [
            PAYLOAD_TAG,
            bytes([PAYLOAD_VERSION]),
            trade,
            struct.pack(">Q", offer.amount_minor),
            currency,
            bytes([len(shop)]),
            shop,
            register,
            struct.pack(">Q", offer.expires_at_ms),
            code,
            screen_digest(offer.shop_name, offer.register_label, offer.description),
            bytes([decision_byte]),
        ]
    )


def signable(offer):
    """Whether the handset may sign this offer: a version it implements and
    payloads that are exactly the bytes rebuilt from what it shows."""
    if offer.payload_version != PAYLOAD_VERSION:
        return "payload_version %d is not one this handset signs" % offer.payload_version
    if rebuild_payload(offer, 1) != offer.approve_payload or rebuild_payload(offer, 2) != offer.decline_payload:
        return "the payloads differ from the bytes rebuilt from the offer's fields"
    return None


# --- the relay ---------------------------------------------------------------


class Handset:
    def __init__(self, number, policy):
        self.number = number
        self.policy = policy  # "approve" or "decline"
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Trade:
    """What the relay remembers of one trade (rules 3, 5 and 7)."""

    def __init__(self):
        self.shown = False
        self.answer = None  # the RelayUp sent, kept byte for byte
        self.verdict = None
        self.withdrawn = None
        self.expires_at_ms = 0


class Relay:
    def __init__(self, pb2, pb2_grpc, channel, metadata, handsets, stop):
        self.pb2 = pb2
        self.stub = pb2_grpc.CarrierServiceStub(channel)
        self.metadata = metadata
        self.handsets = handsets
        self.stop = stop
        self.trades = {}

    def unary(self, method, request):
        """A unary call, retried with backoff while the server is
        unavailable (every carrier call is idempotent); any other error is
        the caller's to fix and raised."""
        backoff = INITIAL_BACKOFF
        while True:
            try:
                return method(request, metadata=self.metadata, timeout=UNARY_TIMEOUT)
            except grpc.RpcError as e:
                retry = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retry or self.stop.is_set():
                    raise
                log("%s: %s; retrying in %.2f s" % (e.code().name, e.details(), backoff))
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def enroll(self):
        for h in self.handsets.values():
            self.unary(
                self.stub.EnrollSubscriber,
                self.pb2.EnrollSubscriberRequest(subscriber_number=h.number, funding=self.pb2.FUNDING_WALLET),
            )
            answer = self.unary(
                self.stub.EnrollHandset,
                self.pb2.EnrollHandsetRequest(subscriber_number=h.number, public_key=h.public),
            )
            if answer.key_sha256 != hashlib.sha256(h.public).digest():
                raise SystemExit("python-relay: the server's key_sha256 is not our key's")
            log("enrolled", h.number, h.policy)

    def forget_old(self):
        now = int(time.time() * 1000)
        for trade_id in [t for t, v in self.trades.items() if v.expires_at_ms and v.expires_at_ms + FORGET_AFTER_MS < now]:
            del self.trades[trade_id]

    def handle(self, down, send):
        """One RelayDown: acknowledge it, then act on its body."""
        pb2 = self.pb2
        if down.delivery_id != 0:
            send(pb2.RelayUp(ack=pb2.Ack(delivery_id=down.delivery_id)))
        body = down.WhichOneof("body")
        if body == "offer":
            self.on_offer(down.offer, send)
        elif body == "withdraw":
            trade = self.trades.setdefault(down.withdraw.trade_id, Trade())
            trade.withdrawn = down.withdraw.state
            log("withdrawn", down.withdraw.trade_id, pb2.TradeState.Name(down.withdraw.state))
        elif body == "answer_result":
            r = down.answer_result
            trade = self.trades.get(r.trade_id)
            if trade is not None and trade.verdict is None:
                trade.verdict = r
            log("verdict", r.trade_id, "accepted" if r.accepted else "refused", pb2.TradeState.Name(r.state), r.message)

    def on_offer(self, offer, send):
        trade = self.trades.setdefault(offer.trade_id, Trade())
        trade.expires_at_ms = offer.expires_at_ms
        if trade.withdrawn is not None:
            return  # an offer after its own withdrawal: acknowledged, not shown
        if trade.shown:
            # A repeat: shown once; the answer again if no verdict came.
            if trade.answer is not None and trade.verdict is None:
                send(trade.answer)
            return
        if offer.expires_at_ms <= int(time.time() * 1000):
            return
        handset = self.handsets.get(offer.subscriber_number)
        if handset is None:
            log("no handset for", offer.subscriber_number)
            return
        refusal = signable(offer)
        if refusal is not None:
            log("not signing", offer.trade_id + ":", refusal)
            trade.shown = True
            return
        trade.shown = True
        log(
            "shows %s: %s / %s: %d %s %r code %s"
            % (
                offer.trade_id,
                offer.shop_name,
                offer.register_label,
                offer.amount_minor,
                offer.currency,
                offer.description,
                offer.binding_code,
            )
        )
        approve = handset.policy == "approve"
        signed = offer.approve_payload if approve else offer.decline_payload
        decision = self.pb2.DECISION_APPROVE if approve else self.pb2.DECISION_DECLINE
        answer = self.pb2.RelayUp(
            answer=self.pb2.HandsetAnswer(trade_id=offer.trade_id, decision=decision, signature=handset.key.sign(signed))
        )
        trade.answer = answer
        send(answer)

    def serve_once(self):
        """One relay stream, until it ends; returns the gRPC code it ended
        with (None for a clean end or a stop)."""
        outbox = queue.Queue(maxsize=SEND_QUEUE)
        done = object()

        def uplink():
            while True:
                item = outbox.get()
                if item is done:
                    return
                yield item

        def send(message):
            outbox.put(message)

        call = self.stub.Relay(uplink(), metadata=self.metadata)

        def cancel_on_stop():
            while not self.stop.wait(0.2):
                if call.done():
                    return
            call.cancel()

        threading.Thread(target=cancel_on_stop, daemon=True).start()
        try:
            for down in call:
                self.handle(down, send)
                self.forget_old()
            return None
        except grpc.RpcError as e:
            if self.stop.is_set():
                return None
            log("stream ended:", e.code().name, e.details())
            return e.code()
        finally:
            outbox.put(done)

    def run(self):
        backoff = INITIAL_BACKOFF
        while not self.stop.is_set():
            started = time.monotonic()
            code = self.serve_once()
            if self.stop.is_set():
                return
            if time.monotonic() - started >= STABLE_STREAM:
                backoff = INITIAL_BACKOFF
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                pause = 0  # read too slowly: catch up at once
            elif code == grpc.StatusCode.ABORTED:
                pause = MAX_BACKOFF  # another relay of this carrier took over
            else:
                pause = backoff * (0.5 + random.random() / 2)
                backoff = min(backoff * 2, MAX_BACKOFF)
            log("reconnecting in %.2f s" % pause)
            self.stop.wait(pause)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description="A minimal syncpay carrier relay (docs/CARRIER.md).")
    parser.add_argument("--server", default="http://127.0.0.1:7700")
    parser.add_argument("--token-file", help="plaintext: the carrier's bearer token")
    parser.add_argument("--ca", help="mutual TLS: the CA of the server's certificate (PEM)")
    parser.add_argument("--cert", help="mutual TLS: this carrier's client certificate (PEM)")
    parser.add_argument("--key", help="mutual TLS: its key (PEM)")
    parser.add_argument("--handset", action="append", default=[], metavar="NUMBER=approve|decline")
    parser.add_argument("--proto", default=os.path.join(here, "..", "proto"), help="the folder holding syncpay/v1/")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: never)")
    args = parser.parse_args()

    handsets = {}
    for entry in args.handset:
        number, _, policy = entry.partition("=")
        if policy not in ("approve", "decline") or not number.startswith("+"):
            parser.error("--handset %r: expected NUMBER=approve or NUMBER=decline" % entry)
        handsets[number] = Handset(number, policy)
    if not handsets:
        parser.error("give at least one --handset")

    pb2, pb2_grpc = compile_proto(os.path.abspath(args.proto))
    target = args.server.split("://", 1)[-1]
    # A fresh subchannel pool: a channel opened right after a server
    # restart must not reuse one that is still backing off.
    options = [("grpc.use_local_subchannel_pool", 1)]
    if args.server.startswith("https://"):
        if not (args.ca and args.cert and args.key):
            parser.error("an https:// server needs --ca, --cert and --key")
        read = lambda path: open(path, "rb").read()
        credentials = grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
        channel = grpc.secure_channel(target, credentials, options=options)
        metadata = ()
    else:
        if not args.token_file:
            parser.error("a plaintext server needs --token-file")
        token = open(args.token_file).read().strip()
        channel = grpc.insecure_channel(target, options=options)
        metadata = (("authorization", "Bearer " + token),)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.duration > 0:
        threading.Timer(args.duration, stop.set).start()

    relay = Relay(pb2, pb2_grpc, channel, metadata, handsets, stop)
    try:
        relay.enroll()
    except grpc.RpcError as e:
        if stop.is_set():
            return 0
        log("enrollment refused:", e.code().name, e.details())
        return 4
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
