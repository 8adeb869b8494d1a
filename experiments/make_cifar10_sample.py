"""Rebuild the embedded CIFAR-10 sample (cnn_depth/_data/cifar10_sample.tgz) from the full archive.

The sample is the first 500 training and the first 100 test images of each class, by sorted file name,
of ../shared/data/cifar10.tgz, in the same layout (cifar10/train/<class>/, cifar10/test/<class>/). The
output is byte-for-byte reproducible: entries sorted, owners and times zeroed.

    python experiments/make_cifar10_sample.py [--src ../shared/data/cifar10.tgz] [--out cnn_depth/_data/cifar10_sample.tgz]
"""
import argparse
import gzip
import io
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = {"train": 500, "test": 100}


def main(src: Path, out: Path) -> None:
    with tarfile.open(src) as t:
        members = [m for m in t.getmembers() if m.isfile()]
        by_class = defaultdict(list)
        for m in members:
            parts = Path(m.name).parts  # cifar10/<split>/<class>/<file>
            if len(parts) == 4 and parts[1] in PER_CLASS:
                by_class[(parts[1], parts[2])].append(m)
        chosen = sorted((m for (split, _), ms in by_class.items()
                         for m in sorted(ms, key=lambda m: m.name)[:PER_CLASS[split]]), key=lambda m: m.name)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as o:
            for m in chosen:
                data = t.extractfile(m).read()
                info = tarfile.TarInfo(m.name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                o.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    counts = defaultdict(int)
    for m in chosen:
        counts[Path(m.name).parts[1]] += 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {dict(counts)} images, "
          f"{len({k[1] for k in by_class})} classes")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10.tgz")
    p.add_argument("--out", type=Path, default=ROOT / "cnn_depth" / "_data" / "cifar10_sample.tgz")
    a = p.parse_args()
    main(a.src, a.out)
