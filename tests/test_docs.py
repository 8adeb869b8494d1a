"""The documentation states what the code does: the sweep options table in docs/cli.md against SweepConfig."""
import re
from pathlib import Path

from typer.testing import CliRunner

from cnn_depth.cli import app
from cnn_depth.config import config_keys, shown_default

ROOT = Path(__file__).resolve().parents[1]


def options_table() -> dict:
    """``{option name: default cell}`` of the first table in docs/cli.md whose header starts with ``option``."""
    rows, inside = {}, False
    for line in (ROOT / "docs" / "cli.md").read_text().splitlines():
        if line.startswith("| option | default |"):
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        if inside and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            name = re.match(r"`--([a-z-]+)", cells[0])[1]
            rows[name.replace("-", "_")] = cells[1].strip("`")
    return rows


def test_cli_docs_table_lists_every_config_field_with_its_default():
    table = options_table()
    for name in config_keys():
        assert name in table, f"docs/cli.md has no row for --{name.replace('_', '-')}"
        assert table[name] == shown_default(name), (name, table[name], shown_default(name))


def test_help_shows_the_config_defaults_and_every_field():
    lines = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "300"}).output.splitlines()
    for name in config_keys():
        row = next(line for line in lines if line.startswith(f"│ --{name.replace('_', '-')} "))
        assert f"[default: ({shown_default(name)})]" in row, name
        assert "<bool>" not in row  # flags take no value (`--quiet true` is refused), so help shows none
