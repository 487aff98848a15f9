"""Checks that each Markdown file shows the polyglot example modules verbatim.

A snippet is a fenced code block right after a marker line
`<!-- snippet: <path from the repo root> -->`; its text must equal the file.
Every snippet found is checked, and each file must show the SNIPPETS (a
README.md also the README_SNIPPETS).
Usage: check_snippets.py FILE.md...
"""
import os
import re
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SNIPPETS = ["tests/polyglot/python/videogen_example.py",
            "tests/polyglot/node/videogen_example.js",
            "tests/polyglot/go/src/videogen_example/main.go"]
# Shown only in README.md: the webhook receivers polyglot_webhooks runs.
README_SNIPPETS = ["tests/polyglot/webhooks/receiver.py",
                   "tests/polyglot/webhooks/receiver.js"]
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
    required = list(SNIPPETS)
    if os.path.basename(markdown_path) == "README.md":
        required += README_SNIPPETS
    for rel in required:
        if rel not in shown:
            hint = ("paste tests/polyglot/README_SNIPPETS.md into it"
                    if rel in SNIPPETS else
                    "show the file under a snippet marker")
            problems.append(f"{markdown_path}: no snippet for {rel}; {hint}")
    for rel, text in sorted(shown.items()):
        try:
            with open(os.path.join(REPO, rel)) as f:
                code = f.read()
        except OSError as e:
            problems.append(f"{markdown_path}: snippet for {rel}: {e}")
            continue
        if text != code:
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
