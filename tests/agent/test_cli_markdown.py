"""`crystalforge eval --markdown`: a suite's table as Markdown for the docs."""

from __future__ import annotations

from crystalforge.agent.cli import markdown_table


def test_markdown_table_formats_and_escapes_cells():
    text = markdown_table(
        ("family", "share", "note"),
        [{"family": "wyckoff", "share": 38.333333, "note": "a|b"}, {"family": "pyxtal"}],
    )
    lines = text.splitlines()
    assert lines[0] == "| family | share | note |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[2] == "| wyckoff | 38.33 | a\\|b |"
    assert lines[3] == "| pyxtal |  |  |"
