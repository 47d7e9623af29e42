"""Leaf issuances per second on one core, next to `openssl speed ecdsap256` in the same run.

One issuance is what a signer does for a CSR: `validate_csr` (PEM decode,
parse, the self-signature's ECDSA verify, the SAN and extension checks) and
`BuiltinProvider.sign_leaf` (build and ECDSA-sign the leaf, encode it as
PEM). The CSRs, each with its own key, are generated before the timed loop.
The anchor is OpenSSL's own P-256 signing rate, `openssl speed -seconds N
ecdsap256`, run in the same process tree. The process pins itself to one CPU
first, and openssl inherits the pinning, so both figures are for one core.
Each run measures both, the two alternating, and the table gives the medians
and the ratio. Target (issue 5): at least 2,000 leaves/s.

Run: .venv/bin/python bench/ca.py [--runs 3] [--seconds 5] [--csrs 2000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import statistics
import subprocess
import time
from datetime import UTC, datetime

from meshnode.ca import (
    BuiltinProvider,
    ServiceID,
    generate_key,
    key_to_pem,
    make_csr,
    validate_csr,
)

_LEAF_TTL_S = 72 * 3600
_TARGET_PER_S = 2000
# openssl speed's row for P-256:
# "256 bits ecdsa (nistp256)  <s/sign> <s/verify> <sign/s> <verify/s>"
_OPENSSL_ROW = re.compile(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)")


def _pin_to_one_cpu() -> int | None:
    """Pin this process (and so its children) to one CPU; the CPU, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


class Signer:
    """A signer's state for the run: a root, its intermediate, and pre-made CSRs."""

    def __init__(self, csr_count: int) -> None:
        self.now = datetime.now(UTC)
        self.provider = BuiltinProvider()
        root = self.provider.generate_root("bench.mesh", now=self.now)
        key = generate_key()
        self.cert_pem = self.provider.sign_intermediate(
            root, key.public_key(), signer_node="n1", now=self.now, ttl_s=30 * 86400
        )
        self.key_pem = key_to_pem(key)
        self.sids = [ServiceID("bench.mesh", "dc1", f"svc{i}") for i in range(csr_count)]
        self.csrs = [make_csr(generate_key(), sid.uri) for sid in self.sids]

    def issue(self, i: int) -> str:
        """One issuance, as a signer handles a request: validate, then sign."""
        index = i % len(self.csrs)
        csr = validate_csr(self.csrs[index], expected=self.sids[index])
        return self.provider.sign_leaf(
            self.cert_pem, self.key_pem, csr, now=self.now, ttl_s=_LEAF_TTL_S
        )

    def rate_per_s(self, seconds: float) -> float:
        """Issuances per second over about `seconds` of wall time."""
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(100):
                self.issue(count)
                count += 1
            now = time.perf_counter()
            if now >= deadline:
                return count / (now - start)


def openssl_sign_per_s(seconds: int) -> float:
    """P-256 signatures per second from `openssl speed` (one process, the pinned CPU)."""
    result = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10 * seconds + 60,
    )
    found = _OPENSSL_ROW.search(result.stdout)
    if found is None:
        raise SystemExit(f"cannot read openssl speed's output:\n{result.stdout}")
    return float(found.group(1))


def profile(signer: Signer, count: int) -> None:
    """cProfile of `count` issuances, the 15 costliest functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(count):
        signer.issue(i)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument("--csrs", type=int, default=2000, help="distinct pre-made CSRs")
    parser.add_argument("--profile", action="store_true", help="profile instead of measuring")
    args = parser.parse_args()
    cpu = _pin_to_one_cpu()
    setup_start = time.perf_counter()
    signer = Signer(args.csrs)
    setup_s = time.perf_counter() - setup_start
    if args.profile:
        profile(signer, args.csrs)
        return
    signer.rate_per_s(0.5)  # warm the issuer cache and the allocator
    print(
        f"cpu={cpu} runs={args.runs} seconds={args.seconds} csrs={args.csrs} "
        f"(making the CSRs took {setup_s:.2f} s)"
    )
    leaves: list[float] = []
    signs: list[float] = []
    for run in range(args.runs):
        # Alternate which goes first, so slow drift on the machine hits both alike.
        if run % 2 == 0:
            leaves.append(signer.rate_per_s(args.seconds))
            signs.append(openssl_sign_per_s(args.seconds))
        else:
            signs.append(openssl_sign_per_s(args.seconds))
            leaves.append(signer.rate_per_s(args.seconds))
        print(
            f"run {run + 1}: meshnode {leaves[-1]:>8,.0f} leaves/s   "
            f"openssl {signs[-1]:>8,.0f} signs/s   ratio {leaves[-1] / signs[-1]:.3f}"
        )
    leaf_median = statistics.median(leaves)
    sign_median = statistics.median(signs)
    verdict = "meets" if leaf_median >= _TARGET_PER_S else "MISSES"
    print(
        f"median: meshnode {leaf_median:,.0f} leaves/s "
        f"({1e6 / leaf_median:.0f} us/leaf), openssl {sign_median:,.0f} P-256 signs/s, "
        f"ratio {leaf_median / sign_median:.3f}; {verdict} the target of {_TARGET_PER_S:,}/s"
    )


if __name__ == "__main__":
    main()
