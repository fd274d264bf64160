"""ifv's requirements without torch and torchvision, with the test extras, one per line:
what benchmarks/gpu_check.sh installs beside a GPU node's own torch.

Run: ``python benchmarks/requirements.py pyproject.toml``. Standard library only, so that
it runs on a bare Python.
"""

from __future__ import annotations

import re
import sys
import tomllib

NODE_OWN = {"torch", "torchvision"}


def requirements(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [r for r in reqs if re.match(r"[A-Za-z0-9_.-]+", r).group().lower() not in NODE_OWN]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
