"""Encode many tc-flower RTM_NEWTFILTER messages: the native batch encoder against the Python reference.

The rules are the kind the agent installs in bulk: IPv4 TCP to one MAC and
address/port, redirected to a representor, differing in handle, destination
address and port. Native: the rows of values are built from ranges (as a
caller with its own tables would) and encoded in chunks into one reused
buffer, both timed. Python: ``flower.encode_newfilter`` on rule objects built
beforehand (not timed), over ``python_rules`` of them (the rate does not
depend on the count; a million would take half a minute). The first
``python_rules`` native messages are compared with the Python ones byte for
byte (``identical``).

Results: native_rules_per_s, native_encode_only_rules_per_s, python_rules_per_s, speedup
(native / python, same run), message_bytes, identical (1 when the bytes agree).
"""

from __future__ import annotations

import array
import gc
import time

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import native
from hwflow.bench import Progress

DEFAULTS = {"rules": 1_000_000, "python_rules": 50_000, "chunk": 65_536}
COLUMNS = ("handle", "ipv4_dst", "tcp_dst")
PROTOTYPE = fl.FlowerRule(
    ifindex=7, prio=100, handle=1, protocol=fl.ETH_P_IP,
    keys=fl.FlowerKeys(eth_dst=0x020000000001, ip_proto=fl.IPPROTO_TCP, ipv4_dst=0x0A000000, tcp_dst=1),
    actions=(fl.Mirred(8),), flags=fl.TCA_CLS_FLAGS_SKIP_SW)


def rows(count: int) -> array.array:
    """Handle i+1, address 10.0.0.0 + i, port 1 + i mod 65535, for every rule i: one row each."""
    values = array.array("Q", bytes(8 * len(COLUMNS) * count))
    values[0::3] = array.array("Q", range(1, count + 1))
    values[1::3] = array.array("Q", range(0x0A000000, 0x0A000000 + count))
    values[2::3] = array.array("Q", (1 + i % 0xFFFF for i in range(count)))
    return values


def encode_native(batch: native.FlowerBatch, count: int, chunk: int) -> tuple[float, float, bytes]:
    """(total seconds, encode-only seconds, the first chunk's bytes)."""
    start = time.perf_counter()
    values = rows(count)
    built = time.perf_counter()
    buffer = bytearray(chunk * batch.message_size)
    width = len(COLUMNS)
    first = b""
    for offset in range(0, count, chunk):
        n = min(chunk, count - offset)
        written = batch.encode_into(buffer, values[offset * width:(offset + n) * width], n, first_seq=offset + 1)
        if not offset:
            first = bytes(buffer[:written])
    end = time.perf_counter()
    return end - start, end - built, first


def run(params: dict, progress: Progress) -> dict[str, float]:
    if not native.NATIVE_AVAILABLE:
        raise RuntimeError("the native tc-flower encoder is not built: run python native/build_tc.py "
                           "(needs a C compiler and python3-dev)")
    count, sample, chunk = params["rules"], min(params["python_rules"], params["rules"]), params["chunk"]
    if min(count, sample, chunk) < 1:
        raise ValueError("rules, python_rules and chunk must be at least 1")
    batch = native.FlowerBatch(PROTOTYPE, COLUMNS)
    progress(f"native: {count} rules of {batch.message_size} bytes, chunks of {chunk}")
    gc.collect()
    native_s, encode_s, first = encode_native(batch, count, min(chunk, count))
    progress(f"native: {count / native_s:,.0f} rules/s; python: {sample} rules")
    rules = batch.rules(rows(sample), sample)
    gc.collect()
    start = time.perf_counter()
    python = [fl.encode_newfilter(rule, seq) for seq, rule in enumerate(rules, start=1)]
    python_s = time.perf_counter() - start
    compared = min(sample, len(first) // batch.message_size)
    identical = b"".join(python[:compared]) == first[:compared * batch.message_size]
    native_rate, python_rate = count / native_s, sample / python_s
    return {
        "native_rules_per_s": round(native_rate),
        "native_encode_only_rules_per_s": round(count / encode_s),
        "python_rules_per_s": round(python_rate),
        "speedup": round(native_rate / python_rate, 1),
        "message_bytes": batch.message_size,
        "identical": int(identical),
    }
