"""What installing the project puts into site-packages: no package of another name's."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

# Top-level names of the standard library a dependency must not install over: swagger-ui-py
# shipped its own tests as a top-level "test" package, which shadows the standard library's
# (python -m test, test.support).
STANDARD_NAMES = frozenset({"test", "tests"})


def installed_tree(name: str) -> dict[str, metadata.Distribution]:
    """The installed distributions ``name`` needs (its base requirements, recursively)."""
    found: dict[str, metadata.Distribution] = {}
    waiting = [name]
    while waiting:
        distribution = metadata.distribution(waiting.pop())
        key = distribution.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = distribution
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                waiting.append(requirement.name)
    return found


def test_no_dependency_installs_a_top_level_test_package() -> None:
    strays = {
        f"{key}: {file}"
        for key, distribution in installed_tree("rose-ash").items()
        for file in distribution.files or []
        if len(file.parts) > 1 and file.parts[0] in STANDARD_NAMES
    }
    assert strays == set(), sorted(strays)[:5]
