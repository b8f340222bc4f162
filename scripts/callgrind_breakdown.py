#!/usr/bin/env python3
"""Self instruction counts from callgrind output files, grouped by crate.

    scripts/callgrind_breakdown.py [--per N] [--marker SUBSTR] [--top K] FILE...

Reads callgrind.out files (one per thread with --separate-threads=yes),
sums each function's self cost (Ir), and groups it by the crate whose
source the instructions came from: code inlined from sled into syncpay is
sled's, `core`/`alloc`/`std` code is charged to the crate of the function
it was inlined into. Per thread it prints the total and the thread's role
(guessed from the functions it ran). `--per N` divides by N (say, settled
trades); `--marker SUBSTR` instead divides by the number of calls to the
functions whose name contains SUBSTR (a function called once per trade).
"""

import argparse
import collections
import re
import sys

REGISTRY = re.compile(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+\.\d+[^/]*/")
# A thread's role, from the functions it ran (collection may start in the
# middle of a run, so the thread's entry function need not appear).
ROLE_HINTS = [
    ("writer", "write_loop"),
    ("writer", "apply_group"),
    ("writer", "TransactionalTrees"),
    ("writer", "apply_batch"),
    ("tokio", "h2::"),
    ("tokio", "tonic::"),
    ("syncer", "sync_loop"),
    ("syncer", "File>::sync_data"),
    ("sled-bg", "sled::"),
]


def crate_of_file(path):
    m = REGISTRY.search(path)
    if m:
        return m.group(1).replace("-", "_")
    if "/rustc/" in path or "/library/" in path:
        return None  # std/core/alloc: charge to the function's crate
    if "/src/" in path and ("syncpay" in path or "/work/" in path):
        return "syncpay"
    return None


def crate_of_fn(name):
    name = name.lstrip("<")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    if m:
        return m.group(1)
    if name.startswith("mi_") or name.startswith("_mi_") or "mimalloc" in name:
        return "mimalloc"
    if name in ("memcpy", "memmove", "memset", "memcmp", "bcmp") or name.startswith("__mem") or name.startswith(
        "__memcpy"
    ) or name.startswith("__memmove") or name.startswith("__memset"):
        return "libc-mem"
    return "other:" + name[:40]


def parse(path):
    names = {"fl": {}, "fn": {}, "ob": {}}
    self_cost = collections.Counter()
    calls = collections.Counter()
    fl = fi = fn = ""
    total = 0
    after_calls = False
    cfn = None

    def name(kind, rest):
        rest = rest.strip()
        m = re.match(r"\((\d+)\)\s*(.*)", rest)
        if not m:
            return rest
        ident, text = m.group(1), m.group(2)
        table = names[kind]
        if text:
            table[ident] = text
        return table.get(ident, ident)

    with open(path, errors="replace") as f:
        for line in f:
            if not line or line[0] == "\n":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if after_calls:
                    after_calls = False  # inclusive cost of a call: not self
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    try:
                        v = int(parts[1])
                    except ValueError:
                        continue
                    self_cost[(fi or fl, fn)] += v
                    total += v
                continue
            key, _, rest = line.partition("=")
            if key == "fl":
                fl = name("fl", rest)
                fi = ""
            elif key in ("fi", "fe"):
                fi = name("fl", rest)
                if fi == fl:
                    fi = ""
            elif key == "fn":
                fn = name("fn", rest)
                fi = ""
            elif key in ("cfl", "cfi"):
                name("fl", rest)
            elif key == "cfn":
                cfn = name("fn", rest)
            elif key == "ob" or key == "cob":
                name("ob", rest)
            elif key == "calls":
                after_calls = True
                try:
                    calls[cfn] += int(rest.split()[0])
                except (ValueError, IndexError):
                    pass
    return self_cost, calls, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--per", type=float, default=None)
    ap.add_argument("--marker", default=None)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    by_crate = collections.Counter()
    by_fn = collections.Counter()
    by_role_crate = collections.defaultdict(collections.Counter)
    all_calls = collections.Counter()
    threads = []
    grand = 0
    for path in args.files:
        self_cost, calls, total = parse(path)
        grand += total
        all_calls.update(calls)
        role = "?"
        fns = {fn for (_, fn) in self_cost} | {c for c in calls if c}
        for r, hint in ROLE_HINTS:
            if any(hint in x for x in fns):
                role = r
                break
        threads.append((path, role, total))
        for (file, fn), v in self_cost.items():
            crate = crate_of_file(file) or crate_of_fn(fn)
            by_crate[crate] += v
            by_role_crate[role][crate] += v
            by_fn[fn] += v

    per = args.per
    if args.marker:
        n = sum(v for k, v in all_calls.items() if k and args.marker in k)
        print(f"marker {args.marker!r}: {n} calls")
        per = n or None
    unit = f" per {per:g}" if per else ""

    def fmt(v):
        return f"{v / per:12.0f}" if per else f"{v:14d}"

    print(f"total Ir{unit}: {fmt(grand).strip()}")
    print("\nper thread:")
    roles = collections.Counter()
    for path, role, total in threads:
        roles[role] += total
    for role, total in roles.most_common():
        print(f"  {role:14s} {fmt(total)}  {100.0 * total / grand:5.1f}%")
    for role, total in roles.most_common():
        if total < grand / 50:
            continue
        print(f"\n{role} thread(s) by crate (self):")
        for crate, v in by_role_crate[role].most_common(12):
            print(f"  {crate:28s} {fmt(v)}  {100.0 * v / grand:5.1f}%")
    print("\nall threads by crate (self):")
    for crate, v in by_crate.most_common(30):
        print(f"  {crate:28s} {fmt(v)}  {100.0 * v / grand:5.1f}%")
    print(f"\ntop {args.top} functions (self):")
    for fn, v in by_fn.most_common(args.top):
        print(f"  {fmt(v)}  {100.0 * v / grand:5.1f}%  {fn[:110]}")


if __name__ == "__main__":
    sys.exit(main())
