"""Copy the latest results into benchmarks/README.md.

Each benchmark's section of the README holds a block between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->``; this replaces it with the tables of ``results/NAME.json`` and a line saying
when, where and how they were measured. ``--check`` only reports whether the README is up to date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def block(result: dict) -> str:
    m = result["machine"]
    load = ", ".join(f"{v:.1f}" for v in m["load_average"])
    lines = [f"_Measured {result['date']} on {m['cpu']} ({m['logical_cpus']} logical CPUs, load average "
             f"{load} at the end), torch {result['torch']}, {result['threads']} thread(s), clock: "
             f"{result.get('clock', 'wall time')}, commit {str(result.get('git_commit'))[:10]} "
             f"(+{result.get('git_changed_files', '?')} changed files), {result['wall_s'] / 60:.1f} min._", ""]
    for t in result["tables"]:
        head = "| " + " | ".join(t["columns"]) + " |\n|" + "|".join("---" for _ in t["columns"]) + "|"
        rows = "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in t["rows"])
        lines += [f"**{t['title']}**", "", head, rows, ""]
        if t.get("notes"):
            lines += [t["notes"], ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = args.readme.read_text()
    new = text
    for name in re.findall(r"<!-- results:([\w-]+) -->", text):
        path = args.results / f"{name}.json"
        if not path.exists():
            print(f"no {path}; leaving its block as it is", file=sys.stderr)
            continue
        body = block(json.loads(path.read_text()))
        new = re.sub(rf"(<!-- results:{name} -->\n).*?(<!-- /results:{name} -->)",
                     lambda m, body=body: m.group(1) + body + m.group(2), new, flags=re.S)
    if args.check:
        print("up to date" if new == text else "README.md is out of date: run python benchmarks/report.py")
        return 0 if new == text else 1
    args.readme.write_text(new)
    print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
