"""Markdown shared by the benchmark kinds: rewriting one generated section of a document
(BENCHMARKS.md for load/, RELIABILITY.md for scenarios/) between its markers."""

from __future__ import annotations

from pathlib import Path


def write_section(marker: str, text: str, doc: Path) -> None:
    """Replace the text between <!-- bench:MARKER:start/end --> in `doc` (append if absent)."""
    start, end = f"<!-- bench:{marker}:start -->", f"<!-- bench:{marker}:end -->"
    body = doc.read_text() if doc.is_file() else f"# {doc.stem.title()}\n"
    block = f"{start}\n{text}\n{end}"
    if start in body and end in body:
        body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)
