"""UCR/UEA series (cnn_depth.series): the .ts and .tsv readers on small handwritten files and on the problems
that ship inside aeon, the conversion into array folders, the one-line errors, a 1D model trained on GunPoint,
and the message when aeon is not installed."""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cnn_depth import dataloaders, depth_learner
from cnn_depth.errors import CnnDepthError
from cnn_depth.series import find_ucr, read_ts, read_tsv, ucr_folder

HAS_AEON = importlib.util.find_spec("aeon") is not None
needs_aeon = pytest.mark.skipif(not HAS_AEON, reason="needs aeon (pip install 'cnn-depth[series]')")

HEADER = """\
# a comment
@problemName Toy
@timeStamps false
@univariate {univariate}
@equalLength true
@classLabel true up down
@data
"""


def ts(path, rows, univariate="true", header=HEADER):
    path.write_text(header.format(univariate=univariate) + "\n".join(rows) + "\n")
    return path


def up_down(k: int, i: int, n: int = 12) -> str:
    """A rising (up) or falling (down) series with a little noise, as a .ts value list."""
    rng = np.random.default_rng(10 * i + k)
    v = np.linspace(0, 1, n)[:: 1 if k == 0 else -1] + rng.normal(0, 0.05, n)
    return ",".join(f"{x:.4f}" for x in v)


def problem(folder, n=6, rows=None, suffix=".ts"):
    """A folder holding Toy_TRAIN and Toy_TEST with ``n`` series per class."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, offset in (("TRAIN", 0), ("TEST", 100)):
        lines = rows(split) if rows else [f"{up_down(k, i + offset)}:{label}" for i in range(n)
                                          for k, label in enumerate(("up", "down"))]
        if suffix == ".ts":
            ts(folder / f"Toy_{split}.ts", lines)
        else:
            (folder / f"Toy_{split}.tsv").write_text(
                "\n".join("\t".join([line.split(":")[-1]] + line.split(":")[0].split(",")) for line in lines) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------------------
# The readers


def test_read_ts_univariate_multivariate_missing_and_unequal(tmp_path):
    samples, labels = read_ts(ts(tmp_path / "u.ts", ["1,2,3:up", "4,?,6:down", "7,8:up"]))
    assert labels == ["up", "down", "up"] and [s.shape for s in samples] == [(1, 3), (1, 3), (1, 2)]
    assert np.isnan(samples[1][0, 1]) and samples[0].tolist() == [[1, 2, 3]]
    samples, labels = read_ts(ts(tmp_path / "m.ts", ["1,2:3,4:5,6:down"], univariate="false"))
    assert samples[0].tolist() == [[1, 2], [3, 4], [5, 6]] and labels == ["down"]


def test_read_ts_header_tags_are_case_insensitive(tmp_path):
    header = "@PROBLEMNAME x\n@TimeStamps false\n@CLASSLABEL true a b\n@DATA\n"
    samples, labels = read_ts(ts(tmp_path / "x.ts", ["1,2:a", "3,4:b"], header=header))
    assert labels == ["a", "b"] and samples[1].tolist() == [[3, 4]]


@pytest.mark.parametrize("header,rows,match", [
    (HEADER, ["1,2:up", "1,2:3,4:down"], r"line 9: 2 dimensions, the first case 1"),
    (HEADER, ["1,2:sideways"], r"line 8: label 'sideways' is not among the @classLabel labels \(down up\)"),
    (HEADER, ["1,x,3:up"], r"line 8: 'x' is not a number"),
    (HEADER, ["1,2,3:4,5:up"], r"line 8: the dimensions of this case have different lengths \(\[2, 3\]\)"),
    (HEADER, ["1,2,3"], r"line 8: a case needs its values and a class label"),
    (HEADER.replace("@timeStamps false", "@timeStamps true"), ["(1,2):up"], r"time-stamped values"),
    (HEADER.replace("@classLabel true up down", "@classLabel false"), ["1,2"], r"no class labels"),
    (HEADER.replace("@classLabel true up down", "@targetLabel true"), ["1,2:3"], r"regression target"),
    (HEADER.replace("@data\n", ""), [], r"has no @data line"),
    (HEADER, [], r"has no cases after @data"),
])
def test_read_ts_errors_are_one_line_naming_the_line(tmp_path, header, rows, match):
    path = ts(tmp_path / "bad.ts", rows, header=header)
    with pytest.raises(CnnDepthError, match=match) as e:
        read_ts(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_read_tsv_drops_ucr_padding_and_reads_old_labels(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("1\t0.5\t0.25\tNaN\tNaN\n-1\t1\tNaN\t3\n1.0000000e+00,2,3,4,5\n")
    samples, labels = read_tsv(path)
    assert labels == ["1", "-1", "1"]
    assert [s.shape for s in samples] == [(1, 2), (1, 3), (1, 4)]  # trailing NaN: padding, not missing values
    assert np.isnan(samples[1][0, 1])  # an inner NaN is a missing value


# ---------------------------------------------------------------------------------------------------------
# A problem's folder: converted once, checked like any array folder


@pytest.mark.parametrize("suffix", [".ts", ".tsv"])
def test_a_problem_folder_gives_dataloaders_of_its_series(tmp_path, suffix):
    dls = dataloaders(problem(tmp_path / "Toy", suffix=suffix), bs=4, device="cpu")
    info = dls.data_info
    assert (info.kind, info.input_shape, dls.vocab) == ("series", (1, 12), ["down", "up"])
    assert info.source.counts == {"train": 12, "test": 12} and info.source.format == suffix[1:]
    first = next(p for p in dls.valid_ds.items if p.name == "00000.npy")  # series 0 of Toy_TEST, an "up"
    assert first.parent.name == "up" and [p.parent.name for p in dls.valid_ds.items] == ["down"] * 6 + ["up"] * 6
    expected = np.array([float(v) for v in up_down(0, 100).split(",")], dtype=np.float32)
    assert np.array_equal(np.load(first)[0], expected)


def test_a_problem_is_converted_once_and_again_when_a_file_changes(tmp_path):
    folder = problem(tmp_path / "Toy")
    a = ucr_folder(*find_ucr(folder))
    stamp = (a / "train" / "up" / "00000.npy").stat().st_mtime_ns
    assert ucr_folder(*find_ucr(folder)) == a and (a / "train" / "up" / "00000.npy").stat().st_mtime_ns == stamp
    ts(folder / "Toy_TRAIN.ts", [f"{up_down(k, i + 50)}:{lab}" for i in range(3)
                                 for k, lab in enumerate(("up", "down"))])
    b = ucr_folder(*find_ucr(folder))
    assert b != a and dataloaders(folder, bs=2, device="cpu").data_info.source.counts["train"] == 6


def test_unequal_lengths_and_missing_values_name_the_series_of_the_file(tmp_path):
    def rows(split):
        lines = [f"{up_down(k, i)}:{label}" for i in range(4) for k, label in enumerate(("up", "down"))]
        if split == "TEST":
            lines[3] = "0.1,0.2,0.3:down"  # series 3 of Toy_TEST is short
            values = up_down(1, 2).split(",")
            lines[5] = ",".join(values[:1] + ["?"] + values[2:]) + ":down"  # and series 5 misses a value
        return lines

    folder = problem(tmp_path / "Toy", rows=rows)
    with pytest.raises(CnnDepthError, match=r"series 3 \(from 0\) of .*Toy_TEST\.ts has 3 time steps, .* has 12: the "
                                             r"series differ in length; pad them"):
        dataloaders(folder)
    with pytest.raises(CnnDepthError, match=r"series 5 \(from 0\) of .*Toy_TEST\.ts has 1 missing values"):
        dataloaders(folder, pad=True)
    dls = dataloaders(folder, pad=True, fill=0.0, bs=4, device="cpu")
    assert dls.data_info.input_shape == (1, 12)
    short = [x for x, p in zip(dls.valid_ds, dls.valid_ds.items) if p.name == "00003.npy"][0][0]
    assert short[0, :3].tolist() == pytest.approx([0.1, 0.2, 0.3]) and (short[0, 3:] == 0).all()


def test_find_ucr_picks_ts_over_tsv_and_the_folders_problem(tmp_path):
    folder = problem(tmp_path / "Toy")
    problem(folder, suffix=".tsv")
    assert [p.name for p in find_ucr(folder)] == ["Toy_TRAIN.ts", "Toy_TEST.ts"]
    (folder / "Other_TRAIN.ts").write_text((folder / "Toy_TRAIN.ts").read_text())
    (folder / "Other_TEST.ts").write_text((folder / "Toy_TEST.ts").read_text())
    assert find_ucr(folder)[0].name == "Toy_TRAIN.ts"  # named as the folder
    other = tmp_path / "Mixed"
    other.mkdir()
    for f in folder.glob("*.ts"):
        (other / f.name).write_text(f.read_text())
    with pytest.raises(CnnDepthError, match=r"holds 2 problems \(Other, Toy\)"):
        dataloaders(other)
    with pytest.raises(CnnDepthError, match=r"Toy_TRAIN\.ts is one file of a UCR problem; give the folder"):
        dataloaders(folder / "Toy_TRAIN.ts")


# ---------------------------------------------------------------------------------------------------------
# The problems that ship inside aeon


@needs_aeon
@pytest.mark.parametrize("name,shape,counts,vocab", [
    ("GunPoint", (1, 150), (50, 150), ["1", "2"]),
    ("ArrowHead", (1, 251), (36, 175), ["0", "1", "2"]),
    ("ItalyPowerDemand", (1, 24), (67, 1029), ["1", "2"]),
    ("BasicMotions", (6, 100), (40, 40), ["Badminton", "Running", "Standing", "Walking"]),
])
def test_registered_problems_read_from_aeon(name, shape, counts, vocab):
    dls = dataloaders(name, bs=8, device="cpu")
    info = dls.data_info
    assert info.input_shape == shape and info.kind == "series" and dls.vocab == vocab
    assert (len(dls.train_ds), len(dls.valid_ds)) == counts


@needs_aeon
def test_a_bn_1d_model_learns_gunpoint():
    from fastai.torch_core import set_seed

    dls = dataloaders("GunPoint", bs=8, device="cpu")
    set_seed(0, reproducible=True)
    learn = depth_learner(dls, depth=3, arch="bn", threads=1)
    assert learn.model.config["ndim"] == 1
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(20, 1e-2)  # 50 training series: 20 epochs take about a second
        accuracy = learn.validate()[1]
    # chance is 0.5 on GunPoint's 150 test series (a binomial std of 0.04): 0.65 is 3.7 std above it
    assert accuracy > 0.65, accuracy


@needs_aeon
def test_unequal_length_problems_from_aeon_need_pad():
    from cnn_depth.series import aeon_data

    folder = aeon_data() / "JapaneseVowels"
    with pytest.raises(CnnDepthError, match=r"series \d+ \(from 0\) of .*JapaneseVowels_TEST\.ts has \d+ time steps"):
        dataloaders(folder)
    info = dataloaders(folder, pad=True, bs=8, device="cpu").data_info
    assert info.input_shape == (12, 29) and info.source.counts == {"train": 270, "test": 370}


NO_AEON = textwrap.dedent("""
    import sys
    sys.modules["aeon"] = None  # as if aeon were not installed: importing it fails
    from cnn_depth import dataloaders
    from cnn_depth.errors import CnnDepthError
    try:
        dataloaders("GunPoint")
    except CnnDepthError as e:
        print("ERROR", e)
""")


def test_without_aeon_a_registered_problem_says_how_to_install_it(tmp_path):
    env = dict(os.environ, CNN_DEPTH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", NO_AEON], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR ") and "pip install 'cnn-depth[series]'" in line and "GunPoint" in line


CONVERT = textwrap.dedent("""
    import sys
    from cnn_depth.series import find_ucr, ucr_folder
    print(ucr_folder(*find_ucr(sys.argv[1])))
""")


@pytest.mark.slow
def test_processes_converting_one_problem_at_once_share_one_folder(tmp_path):
    """The cache protocol (cnn_depth.cache): one process converts, the others wait and use its folder."""
    folder = problem(tmp_path / "Toy", n=40)
    env = dict(os.environ, CNN_DEPTH_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(folder)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1000:] for _, e in outs]
    paths = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(paths) == 1
    converted = paths.pop()
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 160  # 80 + 80 series, written once
    assert not [p for p in (tmp_path / "cache" / "datasets" / "series").iterdir() if p.name.endswith(".tmp")]
    assert (Path(converted) / ".complete").is_file() and (Path(converted) / "origin.json").is_file()
