"""Install the dependencies declared in pyproject.toml, without the package (for Dockerfile.base)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--extra", action="append", default=[], help="optional-dependency groups to add")
    parser.add_argument("--pyproject", default="pyproject.toml")
    args = parser.parse_args()
    project = tomllib.loads(Path(args.pyproject).read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in args.extra:
        requirements += project.get("optional-dependencies", {})[extra]
    subprocess.run([sys.executable, "-m", "pip", "install", *requirements], check=True)


if __name__ == "__main__":
    main()
