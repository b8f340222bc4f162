#!/usr/bin/env python3
"""Verify a syncpay settlement receipt offline, independently of the Rust code.

Written from docs/APPROVAL.md alone, with the `cryptography` package's
Ed25519 (pip install cryptography). Two modes:

  verify_receipt.py --keys KEYS.json --shop SHOP_ID [RECEIPT.json]
      RECEIPT.json is what `syncpay shop status --json` prints (a trade:
      its fields are compared with the signed ones) or its "receipt" object
      alone; stdin when absent. KEYS.json is from `syncpay shop
      receipt-keys --out KEYS.json`. Optional --display-name and
      --register-label (with --description) also check the screen digest.

  verify_receipt.py --vectors docs/approval-vectors.json
      Rebuilds every approval payload and receipt statement of the test
      vectors from their inputs and checks every signature.

Exit codes as syncpay's: 0 verified, 1 does not verify (the reason is
printed), 2 unreadable input or usage.
"""

import argparse
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PAYLOAD_TAG = b"syncpay/approval"
SCREEN_TAG = b"syncpay/screen"
STATEMENT_TAG = b"syncpay/receipt"
COMMITMENT_TAG = b"syncpay/handset-commitment"
STATE_SETTLED = 3
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DECISIONS = {1: "APPROVE", 2: "DECLINE"}


class Refused(Exception):
    """The receipt does not verify (exit 1)."""


class Unreadable(Exception):
    """The input cannot be read (exit 2)."""


class VectorMismatch(Exception):
    """A test vector does not hold (exit 1)."""


def expect(ok, what):
    if not ok:
        raise VectorMismatch(what)


def id_bytes(text, prefix):
    """A trd_/reg_ id's 16 bytes: 26 Crockford base32 digits, big-endian."""
    if not text.startswith(prefix) or len(text) != len(prefix) + 26:
        raise Refused(f"{text!r} is not a {prefix} id")
    value = 0
    for ch in text[len(prefix):].upper():
        if ch not in CROCKFORD:
            raise Refused(f"{text!r} is not a {prefix} id")
        value = value * 32 + CROCKFORD.index(ch)
    if value >> 128:
        raise Refused(f"{text!r} is out of range")
    return value.to_bytes(16, "big")


def screen_digest(shop_name, register_label, description):
    h = hashlib.sha256(SCREEN_TAG)
    for text in (shop_name, register_label, description):
        data = text.encode("utf-8")
        h.update(struct.pack(">I", len(data)))
        h.update(data)
    return h.digest()


def build_payload(version, trade_id, amount, currency, shop_id, register_id, expires_at, decision,
                  binding_code=None, digest=None):
    shop = shop_id.encode("ascii")
    out = PAYLOAD_TAG + bytes([version]) + trade_id + struct.pack(">Q", amount)
    out += currency.encode("ascii") + bytes([len(shop)]) + shop + register_id + struct.pack(">Q", expires_at)
    if version == 2:
        out += binding_code.encode("ascii") + digest
    return out + bytes([{"APPROVE": 1, "DECLINE": 2}[decision]])


def parse_payload(b):
    """The payload's fields; Refused for anything that is not one."""
    if len(b) < 17 or b[:16] != PAYLOAD_TAG:
        raise Refused("signed_payload: does not start with the tag")
    version = b[16]
    if version not in (1, 2):
        raise Refused(f"signed_payload: unknown version {version}")
    n = b[44] if len(b) > 44 else 0
    want = 45 + n + 16 + 8 + (38 if version == 2 else 0) + 1
    if len(b) != want or not 1 <= n <= 32:
        raise Refused(f"signed_payload: {len(b)} bytes, version {version} wants {want}")
    p = {
        "version": version,
        "trade_id": b[17:33],
        "amount": struct.unpack(">Q", b[33:41])[0],
        "currency": b[41:44].decode("ascii", "replace"),
        "shop_id": b[45:45 + n].decode("ascii", "replace"),
        "register_id": b[45 + n:61 + n],
        "expires_at": struct.unpack(">Q", b[61 + n:69 + n])[0],
        "decision": DECISIONS.get(b[-1]),
    }
    if p["decision"] is None:
        raise Refused("signed_payload: unknown decision byte")
    if version == 2:
        p["binding_code"] = b[69 + n:75 + n].decode("ascii", "replace")
        p["screen_digest"] = b[75 + n:107 + n]
        if not p["binding_code"].isdigit():
            raise Refused("signed_payload: binding code is not six digits")
    return p


def statement(key_id, payload, signature, commitment, settled_at):
    return (STATEMENT_TAG + bytes([1]) + key_id + struct.pack(">I", len(payload)) + payload + signature
            + commitment + bytes([STATE_SETTLED]) + struct.pack(">Q", settled_at))


def commitment(trade_id, public_key):
    return hashlib.sha256(COMMITMENT_TAG + trade_id + public_key).digest()


def verifies(public_key, message, signature):
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def hexfield(obj, name, length=None):
    value = obj.get(name) or ""
    try:
        data = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise Refused(f"{name}: not hex")
    if length is not None and len(data) != length:
        raise Refused(f"{name}: must be {length} bytes, is {len(data)}")
    return data


def load_keys(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != "syncpay-receipt-keys" or doc.get("version") != 1:
            raise Unreadable(f"{path}: not a syncpay receipt key file")
        keys = {}
        for k in doc["keys"]:
            public_key = bytes.fromhex(k["public_key"])
            key_id = bytes.fromhex(k["key_id"])
            if len(public_key) != 32 or hashlib.sha256(public_key).digest()[:8] != key_id:
                raise Unreadable(f"{path}: key {k['key_id']} does not match its public key")
            keys[key_id] = public_key
        return keys
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Unreadable(f"{path}: {e}")


def verify(receipt, keys, shop_id):
    """The steps of docs/APPROVAL.md; returns the payload's fields."""
    if not receipt.get("countersignature") and not receipt.get("statement_version"):
        raise Refused("no countersignature (settled before receipts were countersigned)")
    if receipt.get("statement_version") != 1:
        raise Refused(f"statement version {receipt.get('statement_version')} is unknown")
    payload = hexfield(receipt, "signed_payload")
    signature = hexfield(receipt, "signature", 64)
    commit = hexfield(receipt, "handset_commitment", 32)
    key_id = hexfield(receipt, "receipt_key_id", 8)
    counter = hexfield(receipt, "countersignature", 64)
    settled_at = receipt.get("settled_at_ms")
    if not isinstance(settled_at, int) or settled_at < 0:
        raise Refused("settled_at_ms: must be a non-negative integer")
    p = parse_payload(payload)
    if key_id not in keys:
        raise Refused(f"receipt_key_id {key_id.hex()} is not among the trusted keys")
    if not verifies(keys[key_id], statement(key_id, payload, signature, commit, settled_at), counter):
        raise Refused(f"countersignature does not verify under key {key_id.hex()}")
    if p["decision"] != "APPROVE":
        raise Refused("the signed payload is a DECLINE")
    if p["shop_id"] != shop_id:
        raise Refused(f"the receipt is for shop {p['shop_id']}, not {shop_id}")
    if settled_at >= p["expires_at"]:
        raise Refused("settled at or after the expiry")
    p["settled_at"] = settled_at
    p["key_id"] = key_id
    return p


def verify_trade(trade, keys, shop_id):
    if trade.get("state") != "SETTLED" or not trade.get("receipt"):
        raise Refused(f"no receipt: the trade is {trade.get('state')}")
    p = verify(trade["receipt"], keys, shop_id)
    checks = [
        ("trade_id", p["trade_id"] == id_bytes(trade.get("trade_id", ""), "trd_")),
        ("register_id", p["register_id"] == id_bytes(trade.get("register_id", ""), "reg_")),
        ("amount_minor", p["amount"] == trade.get("amount_minor")),
        ("currency", p["currency"] == trade.get("currency")),
        ("expires_at_ms", p["expires_at"] == trade.get("expires_at_ms")),
        ("finished_at_ms", p["settled_at"] == trade.get("finished_at_ms")),
        ("binding_code", p["version"] == 1 or p["binding_code"] == trade.get("binding_code")),
    ]
    for field, ok in checks:
        if not ok:
            raise Refused(f"{field}: the trade and its signed receipt disagree")
    return p


def check_vectors(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    handset_seed = bytes.fromhex(doc["handset_key"]["seed"])
    handset = Ed25519PrivateKey.from_private_bytes(handset_seed)
    handset_public = handset.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    expect(handset_public.hex() == doc["handset_key"]["public_key"], "handset public key")
    operator = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(doc["receipt_key"]["seed"]))
    operator_public = operator.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    expect(operator_public.hex() == doc["receipt_key"]["public_key"], "receipt public key")
    expect(hashlib.sha256(operator_public).digest()[:8].hex() == doc["receipt_key"]["key_id"], "key id")
    count = 0
    for v in doc["approval_payloads"]:
        name = v["name"]
        trade_id = id_bytes(v["trade_id"], "trd_")
        register_id = id_bytes(v["register_id"], "reg_")
        expect(trade_id.hex() == v["trade_id_hex"], name)
        expect(register_id.hex() == v["register_id_hex"], name)
        digest = None
        if v["payload_version"] == 2:
            digest = screen_digest(v["shop_name"], v["register_label"], v["description"])
            expect(digest.hex() == v["screen_digest"], f"{name}: screen digest")
        built = build_payload(v["payload_version"], trade_id, int(v["amount_minor"]), v["currency"], v["shop_id"],
                              register_id, int(v["expires_at_ms"]), v["decision"], v["binding_code"], digest)
        expect(built.hex() == v["payload"], f"{name}: payload rebuilt from the inputs")
        signature = bytes.fromhex(v["signature"])
        expect(handset.sign(built) == signature, f"{name}: signature reproduced")
        expect(verifies(handset_public, built, signature), f"{name}: signature verifies")
        parsed = parse_payload(built)
        expect(parsed["shop_id"] == v["shop_id"] and parsed["amount"] == int(v["amount_minor"]), name)
        count += 1
    keys = {bytes.fromhex(doc["receipt_key"]["key_id"]): operator_public}
    for r in doc["receipts"]:
        name = r["name"]
        payload = bytes.fromhex(r["signed_payload"])
        p = parse_payload(payload)
        expect(commitment(p["trade_id"], handset_public).hex() == r["handset_commitment"], f"{name}: commitment")
        s = statement(bytes.fromhex(r["receipt_key_id"]), payload, bytes.fromhex(r["signature"]),
                      bytes.fromhex(r["handset_commitment"]), int(r["settled_at_ms"]))
        expect(s.hex() == r["statement"], f"{name}: statement rebuilt")
        expect(operator.sign(s).hex() == r["countersignature"], f"{name}: countersignature reproduced")
        receipt = dict(r, settled_at_ms=int(r["settled_at_ms"]))
        verify(receipt, keys, r["shop_id"])
        count += 1
    print(f"all {count} vectors hold")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("receipt", nargs="?", help="trade or receipt JSON (default: stdin)")
    parser.add_argument("--keys", help="receipt key file")
    parser.add_argument("--shop", help="this shop's id")
    parser.add_argument("--display-name")
    parser.add_argument("--register-label")
    parser.add_argument("--description")
    parser.add_argument("--vectors", help="check a test-vector file instead")
    args = parser.parse_args()
    try:
        if args.vectors:
            check_vectors(args.vectors)
            return 0
        if not args.keys or not args.shop:
            raise Unreadable("--keys and --shop are required")
        keys = load_keys(args.keys)
        try:
            text = open(args.receipt, encoding="utf-8").read() if args.receipt not in (None, "-") else sys.stdin.read()
            doc = json.loads(text)
        except (OSError, ValueError) as e:
            raise Unreadable(str(e))
        if "receipt" in doc:
            p = verify_trade(doc, keys, args.shop)
            description = doc.get("description", "") if args.description is None else args.description
        else:
            p = verify(doc, keys, args.shop)
            description = args.description or ""
        if args.display_name is not None:
            if p["version"] != 2:
                raise Refused("a version 1 payload signs no screen text")
            if screen_digest(args.display_name, args.register_label or "", description) != p["screen_digest"]:
                raise Refused("the screen digest is not the digest of the given texts")
        print(f"receipt verifies: key {p['key_id'].hex()}, shop {p['shop_id']}, amount {p['amount']} "
              f"{p['currency']}, settled at {p['settled_at']}")
        return 0
    except Refused as e:
        print(f"receipt does not verify: {e}", file=sys.stderr)
        return 1
    except VectorMismatch as e:
        print(f"vectors do not hold: {e}", file=sys.stderr)
        return 1
    except Unreadable as e:
        print(f"unreadable: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
