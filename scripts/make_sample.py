"""Regenerate the project's synthetic image sample (``data_sample/``).

Usage::

    python scripts/make_sample.py [--out data_sample] [--per-class 10] [--seed 0] [--quality 90]

Stale ``*.jpg`` files in the class folders of ``--out`` are removed first, so the
folder holds exactly the generated sample. The script refuses to touch a folder
that holds anything else than ``README.md`` and class folders of ``.jpg`` files
(so a typo in ``--out`` cannot wipe real data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable without installing the package
    sys.path.insert(0, str(REPO))

from p8utils import sample  # noqa: E402

README = "README.md"


def _stale_files(out: Path) -> list[Path]:
    """Return the files that a regeneration may delete; raise if ``out`` holds anything else."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise SystemExit(f"--out={str(out)!r} is a file. Fix: pass a folder (e.g. data_sample).")
    stale: list[Path] = []
    foreign: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.is_file() and entry.name == README:
            continue
        if entry.is_dir() and not entry.is_symlink():
            for item in sorted(entry.iterdir()):
                if item.is_file() and not item.is_symlink() and item.suffix.lower() == ".jpg":
                    stale.append(item)
                else:
                    foreign.append(str(item.relative_to(out)))
        else:
            foreign.append(entry.name)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" …" if len(foreign) > 5 else "")
        raise SystemExit(
            f"--out={str(out)!r} holds files that are not a generated sample ({shown}). "
            "Refusing to wipe it. Fix: pass an empty or new folder, or remove those files yourself."
        )
    return stale


def _readme(out: Path, per_class: int, seed: int, quality: int, n_files: int) -> str:
    """Return the text of ``<out>/README.md`` for this generation."""
    try:
        shown_out = out.resolve().relative_to(REPO).as_posix()
    except ValueError:
        shown_out = str(out)
    names = sample.sample_file_names(per_class)
    classes = "\n".join(f"- `{cls}/` — {per_class} images" for cls in sample.CLASSES)
    return f"""# Synthetic fruit sample (project-generated)

{n_files} colour images, 100x100 RGB JPEG, {len(sample.CLASSES)} classes x {per_class}, one folder per class.

These are **not photographs**: every image is drawn procedurally by `p8utils/sample.py`
(Pillow `ImageDraw` + NumPy: shaded bodies of revolution, textures, stems and leaves).
No third-party image went into them, so they are covered by this repository's licence
(MIT, see `pyproject.toml`), like the rest of the code.

They follow the Fruits-360 conventions so that the pipeline treats them like the real
dataset: one fruit centred on a pure white background, the label is the folder name
(with spaces), file names `r_<angle>_100.jpg` where `<angle>` is the view's rotation
about the vertical axis in degrees ({names[0]}, {names[1] if len(names) > 1 else "…"}, …).
Each image varies that rotation (the skin texture turns with it), the in-plane tilt, the
position, the scale, the light direction and slightly the colour, so that PCA of CNN
features finds both between-class and within-class structure.

## Classes

{classes}

## Regenerate

```bash
python scripts/make_sample.py --out {shown_out} --per-class {per_class} --seed {seed} --quality {quality}
# or: make sample
```

The script first deletes the old `*.jpg` files of the class folders, then writes the
new ones. Generation is deterministic: the same seed gives byte-identical JPEGs with the
same Pillow/libjpeg (baseline JPEG, quality {quality}, 4:2:0, no optimisation pass, no
metadata). `tests/test_sample.py` checks that this folder matches a fresh generation
(same names, decoded pixels within a small tolerance).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, wipe stale images, generate the sample, write the README."""
    parser = argparse.ArgumentParser(description="Regenerate the synthetic fruit image sample.")
    parser.add_argument(
        "--out", type=Path, default=REPO / "data_sample", help="output folder (default: data_sample/ of the repo)"
    )
    parser.add_argument("--per-class", type=int, default=10, help="images per class (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole sample (default: 0)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default: 90)")
    args = parser.parse_args(argv)

    if args.per_class < 1:
        parser.error(f"--per-class={args.per_class} must be >= 1. Fix: pass e.g. --per-class 10.")
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality={args.quality} must be in [1, 95]. Fix: pass e.g. --quality 90.")
    if args.seed < 0:
        parser.error(f"--seed={args.seed} must be >= 0. Fix: pass e.g. --seed 0.")
    out: Path = args.out
    stale = _stale_files(out)
    for path in stale:
        path.unlink()
    for folder in sorted({p.parent for p in stale}):
        if not any(folder.iterdir()):
            folder.rmdir()
    written = sample.generate_sample(out, n_per_class=args.per_class, seed=args.seed, quality=args.quality)
    with open(out / README, "w", encoding="utf-8", newline="\n") as fh:  # LF on every OS
        fh.write(_readme(out, args.per_class, args.seed, args.quality, len(written)))
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} images ({total / 1024:.0f} KiB) in {len(sample.CLASSES)} classes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
