#!/usr/bin/env python3
"""Fails when a relative link in the tracked Markdown files points at nothing: a file or folder
that is not in the repository, or a `#heading` that the target file does not have. Web links are
not followed.

Usage: python3 .ci/check-links.py   (from anywhere in the repository)
"""
import pathlib
import re
import subprocess
import sys

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+\s+(.*)$")


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.add(anchor(m.group(1)))
    return found


def main():
    root = pathlib.Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    tracked = subprocess.check_output(["git", "ls-files"], cwd=root, text=True).splitlines()
    tracked_set = set(tracked)
    folders = {str(pathlib.PurePosixPath(p).parent) for p in tracked}
    broken = []
    for name in (p for p in tracked if p.endswith(".md")):
        page = root / name
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http(s), mailto
                file, _, fragment = target.partition("#")
                resolved = (page.parent / file).resolve() if file else page.resolve()
                relative = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None
                if relative not in tracked_set and relative not in folders:
                    broken.append(f"{name}:{number}: {target}: no such tracked file or folder")
                elif fragment and relative.endswith(".md") and fragment not in anchors(resolved):
                    broken.append(f"{name}:{number}: {target}: no heading #{fragment}")
    if broken:
        print("Broken links:", *broken, sep="\n  ")
        return 1
    print("links: every relative link in the tracked Markdown files resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
