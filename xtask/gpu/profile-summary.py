#!/usr/bin/env python3
"""Summarises a cubecl profile log (gpu-check.sh's decode profile): GPU time per kernel kind over
the last part of the log (decoding, after the prefill), and the kernels compiled there.

Usage: profile-summary.py PROFILE_LOG [--tail FRACTION]
A line `| 104.9µs | MatmulEntry | TensorArgs | ...` is one profiled launch; `[Compiling kernel] X`
a compilation. Launches longer than COMPILE_MS include their kernel's compilation and are left out.
"""
import argparse
import collections
import lzma

COMPILE_MS = 20.0
UNITS = (("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0))
# Kernel families whose second field tells variants apart (the operation or the argument kind).
QUALIFIED = {"KernelBinop", "KernelScalarBinop", "UnaryFloat", "KernelScalarCmp", "ReduceKernel", "MatmulEntry"}


def seconds(text):
    text = text.strip()
    for unit, scale in UNITS:
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"no time unit in {text!r}")


def kernel_kind(fields):
    name = fields[0]
    return f"{name} {fields[1]}" if name in QUALIFIED and len(fields) > 1 else name


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--tail", type=float, default=0.6, help="fraction of the log (its end) to summarise")
    args = parser.parse_args()
    opener = lzma.open if args.log.endswith(".xz") else open
    with opener(args.log, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    part = lines[int(len(lines) * (1 - args.tail)):]
    total, count, compiled = collections.defaultdict(float), collections.Counter(), collections.Counter()
    for line in part:
        if line.startswith("[Compiling kernel]"):
            compiled[line.removeprefix("[Compiling kernel]").strip()] += 1
        elif line.startswith("| "):
            fields = [f.strip() for f in line.split("|")[1:] if f.strip()]
            took = seconds(fields[0])
            if took * 1e3 < COMPILE_MS:
                kind = kernel_kind(fields[1:])
                total[kind] += took
                count[kind] += 1
    grand = sum(total.values())
    print(f"last {args.tail:.0%} of {len(lines)} lines: {sum(count.values())} launches, {grand * 1e3:.1f} ms of GPU time")
    print(f"{'ms':>9} {'share':>6} {'launches':>9} {'mean µs':>9}  kernel")
    for kind, took in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"{took * 1e3:9.1f} {took / grand:6.1%} {count[kind]:9d} {took / count[kind] * 1e6:9.1f}  {kind}")
    print(f"compiled in that part: {sum(compiled.values())}")
    for kernel, n in compiled.most_common():
        print(f"  {n} × {kernel}")


if __name__ == "__main__":
    main()
