"""The documentation's own recipes, read from the page so tests run exactly what readers see."""

from __future__ import annotations

from pathlib import Path

FORMAT = Path(__file__).resolve().parents[2] / "docs" / "format.md"


def doc_snippet(marker: str, page: Path = FORMAT) -> str:
    """The Python block of a docs page between two ``<!-- marker -->`` comments."""
    block = page.read_text(encoding="utf-8").split(f"<!-- {marker} -->", 2)[1]
    return block.split("```python", 1)[1].split("```", 1)[0]
