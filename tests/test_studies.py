"""The recorded depth studies (experiments/<study>/): every config parses, and every page states exactly what
its recorded results summarise to with the tool's own functions."""
import importlib.util
from pathlib import Path

import pytest

from cnn_depth.config import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("studies", ROOT / "experiments" / "studies.py")
studies = importlib.util.module_from_spec(spec)
spec.loader.exec_module(studies)

STUDIES = studies.studies()


def test_the_three_studies_are_there():
    assert {"tutorial-depth", "degradation", "augmentation"} <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_every_config_parses_and_writes_inside_its_study(study):
    for toml in sorted((ROOT / "experiments" / study).glob("*.toml")):
        cfg = SweepConfig.from_toml(toml)
        assert isinstance(cfg, SweepConfig) and cfg.depths and len(cfg.seeds) >= 3, toml
        out = (ROOT / cfg.out_dir).resolve()
        assert out.parent == (ROOT / "experiments" / study / "results").resolve(), (toml, out)
        assert isinstance(cfg.threads, int), f"{toml}: a recorded study pins its thread count (it moves last digits)"
    for toml in sorted((ROOT / "experiments" / study).glob("*/*.toml")):  # configs for other machines (a GPU)
        cfg = SweepConfig.from_toml(toml)
        assert cfg.depths and len(cfg.seeds) >= 3, toml


@pytest.mark.parametrize("study", STUDIES)
def test_the_page_states_what_the_recorded_results_summarise_to(study):
    blocks = studies.blocks(study)
    assert blocks, f"{study}/README.md has no summary block"
    tomls = {p.name for p in (ROOT / "experiments" / study).glob("*.toml")}
    covered = set()
    for kind, names, written in blocks:
        assert set(names) <= tomls, names
        covered |= set(names)
        results = [studies.results_csv(study, n) for n in names]
        assert all(r.is_file() for r in results), results
        assert written == studies.table(study, names, kind), (
            f"{study}/README.md differs from its data: run python experiments/studies.py update {study}")
    assert covered == tomls, f"configs with no table on the page: {tomls - covered}"


@pytest.mark.parametrize("study", STUDIES)
def test_the_recorded_runs_are_the_configs_grids(study):
    import pandas as pd

    for toml in sorted((ROOT / "experiments" / study).glob("*.toml")):
        cfg = SweepConfig.from_toml(toml)
        df = pd.read_csv(studies.results_csv(study, toml.name))
        assert (df["status"] == "ok").all() and df["run_id"].is_unique, toml
        if cfg.seeds == "auto":  # each cell (grid combination, depth): a prefix of the rule's seeds, min to max
            plan, by = cfg.plan(), list(cfg.varying()) + ["depth"]
            cells = df.groupby(by)["seed"].apply(sorted)
            assert len(cells) == len(cfg.combinations()) * len(cfg.depths), toml
            for seeds in cells:
                assert seeds == list(plan.order[:len(seeds)]) and plan.min_seeds <= len(seeds) <= plan.max_seeds, toml
        else:
            assert set(zip(df["depth"], df["seed"])) == {(d, s) for d in cfg.depths for s in cfg.seeds}, toml
        assert (df["epochs"] == cfg.epochs).all() and (df["threads"] == cfg.threads).all(), toml
