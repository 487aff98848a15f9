"""Checks that each Markdown file shows the polyglot example modules verbatim.

A snippet is a fenced code block right after a marker line
`<!-- snippet: <path from the repo root> -->`; its text must equal the file.
Usage: check_snippets.py FILE.md...
"""
import os
import re
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SNIPPETS = ["tests/polyglot/python/videogen_example.py",
            "tests/polyglot/node/videogen_example.js",
            "tests/polyglot/go/src/videogen_example/main.go"]
MARKER = re.compile(r"<!-- snippet: (\S+) -->\n```[a-z]*\n(.*?)^```$",
                    re.DOTALL | re.MULTILINE)


def check(markdown_path):
    """Returns a list of problems (empty when the file is in sync)."""
    try:
        with open(markdown_path) as f:
            shown = dict(MARKER.findall(f.read()))
    except OSError as e:
        return [f"{markdown_path}: {e}"]
    problems = []
    for rel in SNIPPETS:
        with open(os.path.join(REPO, rel)) as f:
            code = f.read()
        if rel not in shown:
            problems.append(f"{markdown_path}: no snippet for {rel}; paste "
                            "tests/polyglot/README_SNIPPETS.md into it")
        elif shown[rel] != code:
            problems.append(f"{markdown_path}: snippet for {rel} differs from "
                            "the file the tests run; copy the file into it")
    return problems


def main(paths):
    problems = [p for path in paths for p in check(path)]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"snippets in sync: {', '.join(paths)}")
    return 1 if problems or not paths else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
