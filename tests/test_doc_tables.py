"""The Markdown pages render as written: no table is cut in two by a blank line."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def split_tables(text: str) -> list[int]:
    """Line numbers (1-based) of table rows that follow a blank line right after another table's row, with no
    header separator of their own: Markdown renders them as a paragraph of pipes, not as the table's rows."""
    lines = text.splitlines()
    bad = []
    for i in range(2, len(lines)):
        row, gap, before = lines[i], lines[i - 1], lines[i - 2]
        is_separator = i + 1 < len(lines) and lines[i + 1].startswith("|--")
        if row.startswith("|") and not gap.strip() and before.startswith("|") and not is_separator:
            bad.append(i + 1)
    return bad


def test_split_tables_are_found():
    assert split_tables("| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n") == [5]
    assert split_tables("| a | b |\n|---|---|\n| 1 | 2 |\n\n| c | d |\n|---|---|\n") == []  # a new table


def test_no_table_in_the_docs_is_split_by_a_blank_line():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").glob("**/*.md"))]
    split = {str(p.relative_to(ROOT)): split_tables(p.read_text()) for p in pages}
    assert {p: n for p, n in split.items() if n} == {}
