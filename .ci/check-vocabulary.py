#!/usr/bin/env python3
"""Fails when a tracked file speaks of how the project was worked on instead of the project itself:
numbered work periods, machines on loan or drawn by chance, the accelerator's time budget,
numbered issues. A hit that is a legitimate use of a word (a random draw, an upstream project's
issue) is listed in .ci/vocabulary-allow.txt as `PATH: TEXT`, allowing the lines of PATH that
contain TEXT.

Usage: python3 .ci/check-vocabulary.py   (from anywhere in the repository)
"""
import pathlib
import re
import subprocess
import sys

PATTERNS = {
    "work period": r"\bsess(ion)s?\b",
    "machine loan": r"\blent\b|\blend(s|ing)?\b|\bloan(s|ed)?\b",
    "machine draw": r"\b(first|second|third|fourth|fifth|sixth|seventh|next|this|each|every) draw\b"
    r"|\bdrawn (task|machine|GPU)s?\b|\bdraws? (of|for) (a|the) (GPU|machine|device)\b",
    "accelerator time": r"\bdevice[- ]time\b|\bdevice (call|calls|tool|reply)\b",
    "issue number": r"\b(issue|issues|PR|pull request) ?#?\d+\b",
    "one of our issues": r"\bthe [\w-]+ issue\b",
    "numbered work period": r"\b(sess(ion)|period|round) \d+'s\b|\b\d+'s (model|twig|base|run)\b",
    "missing design document": r"(?-i:\bDESIGN\.md\b)",
}
HERE = pathlib.Path(__file__).resolve().parent
ALLOW_FILE = HERE / "vocabulary-allow.txt"
# The checker and its allow-list spell the patterns out.
SKIPPED = {".ci/check-vocabulary.py", ".ci/vocabulary-allow.txt", "Cargo.lock"}


def allow_list():
    allowed = []
    for number, line in enumerate(ALLOW_FILE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, text = line.partition(": ")
        if not sep or not text:
            sys.exit(f"{ALLOW_FILE}:{number}: expected `PATH: TEXT`, got {line!r}")
        allowed.append((path, text))
    return allowed


def main():
    root = pathlib.Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    files = subprocess.check_output(["git", "ls-files", "-z"], cwd=root, text=True).split("\0")
    pattern = re.compile("|".join(f"(?P<p{i}>{p})" for i, p in enumerate(PATTERNS.values())), re.IGNORECASE)
    names = list(PATTERNS)
    allowed = allow_list()
    used = set()
    hits = []
    for path in filter(None, files):
        if path in SKIPPED:
            continue
        data = (root / path).read_bytes() if (root / path).is_file() else b""
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            for match in pattern.finditer(line):
                rule = next(int(name[1:]) for name, text in match.groupdict().items() if text is not None)
                permit = next(((p, t) for p, t in allowed if p == path and t in line), None)
                if permit:
                    used.add(permit)
                    continue
                hits.append(f"{path}:{number}: {names[rule]}: {line.strip()[:160]}")
    for path, text in allowed:
        if (path, text) not in used:
            hits.append(f"{ALLOW_FILE.name}: `{path}: {text}` allows nothing any more; remove it")
    if hits:
        print("Tracked files must speak of the project alone:", *hits, sep="\n  ")
        return 1
    print(f"vocabulary: {sum(1 for f in files if f)} tracked files clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
