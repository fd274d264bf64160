"""ifv's requirements without torch and torchvision, with pytest, one per line:
what benchmarks/gpu_check.sh installs beside a GPU node's own torch.

Run: ``python benchmarks/requirements.py pyproject.toml [--missing]``; ``--missing`` lists
only those this Python lacks or has in a version that does not satisfy them. Standard
library (and pip's own copy of ``packaging``) only, so that it runs on a bare Python.
"""

from __future__ import annotations

import re
import sys
import tomllib

# the node's own (torch, torchvision) and what the check does not run (the linter)
LEFT_OUT = {"torch", "torchvision", "ruff"}


def requirements(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [r for r in reqs if re.match(r"[A-Za-z0-9_.-]+", r).group().lower() not in LEFT_OUT]


def missing(reqs: list[str]) -> list[str]:
    """The requirements that no installed distribution satisfies."""
    from importlib.metadata import PackageNotFoundError, version

    from pip._vendor.packaging.requirements import Requirement

    out = []
    for r in reqs:
        req = Requirement(r)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            out.append(r)
            continue
        if not req.specifier.contains(have, prereleases=True):
            out.append(r)
    return out


if __name__ == "__main__":
    reqs = requirements(sys.argv[1])
    print("\n".join(missing(reqs) if "--missing" in sys.argv[2:] else reqs))
