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


def test_readme_is_a_front_door_whose_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    commands = [line.strip() for line in readme.splitlines() if line.startswith("    python3 -m venv")]
    assert len(commands) == 2 and commands[1] == ci, (commands, ci)
    assert commands[0].endswith("cnn-depth sweep --depths 2 3 4")
    assert not re.search(r"\b[A-Z]{4,}_[A-Z_]+\b", readme), "a placeholder left in the README"


def test_relative_links_in_the_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").glob("**/*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
