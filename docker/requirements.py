"""Print the project's runtime requirements from pyproject.toml, one per line.

Used by the Dockerfiles so that dependencies are installed in a layer of their own (rebuilt only
when pyproject.toml changes) before the project's source is copied in.

    python requirements.py PYPROJECT [--faiss cpu|gpu] [--only NAME] [--exclude NAME]

``--faiss gpu`` swaps the ``faiss-cpu`` core dependency for the ``gpu`` extra: both wheels
install the same ``faiss`` module, so only one of them may be present.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--faiss", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--only", action="append", default=[], help="print only these packages")
    parser.add_argument("--exclude", action="append", default=[], help="leave these packages out")
    args = parser.parse_args()

    project = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    if args.faiss == "gpu":
        requirements = [r for r in requirements if _name(r) != "faiss-cpu"]
        requirements += project["optional-dependencies"]["gpu"]
    only = {_name(n) for n in args.only}
    exclude = {_name(n) for n in args.exclude}
    for requirement in requirements:
        name = _name(requirement)
        if (not only or name in only) and name not in exclude:
            print(requirement)


if __name__ == "__main__":
    main()
