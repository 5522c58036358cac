"""Packaging: portal's and jobs' packages are found by their __init__.py, so new ones ship too."""

from setuptools import find_packages, setup

# templates/ and migrations/ stay at the top of the repository (the design card's layout) and
# ship inside the package as portal.templates and portal.migrations (package-dir in
# pyproject.toml); no finder can discover a folder under another name, so they are named here.
setup(
    packages=[
        *find_packages(include=["portal", "portal.*", "jobs", "jobs.*"]),
        "portal.templates",
        "portal.migrations",
    ]
)
