"""Regenerate the project's synthetic images: ``data_sample/`` and the offline weights' calibration set.

Usage::

    python scripts/make_sample.py [--out data_sample] [--per-class 10] [--seed 0] [--quality 90]
    python scripts/make_sample.py --calibration [--out p8utils/data/calibration]

The images are drawn by ``scripts/fruit_renderer.py`` (a development script,
not part of the installed package).

Sample mode: stale ``*.jpg`` files in the class folders of ``--out`` are removed
first, so the folder holds exactly the generated sample. The script refuses to
touch a folder that holds anything else than ``README.md`` and class folders of
``.jpg`` files (so a typo in ``--out`` cannot wipe real data).

``--calibration``: writes ``calibration_images(16, seed=12345)`` as lossless PNGs
``calibration_00.png`` … ``calibration_15.png``, the package data on which
``load_weights(..., "offline")`` recalibrates its BatchNorm statistics (the same
16 images for every seed). Run it only to change that set: the offline weights,
and their SHA-256, change with it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (REPO, HERE):  # runnable without installing the package; the renderer lives next to this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

renderer = importlib.import_module("fruit_renderer")

README = "README.md"
#: Where ``--calibration`` writes by default (package data of p8utils).
CALIBRATION_DIR = REPO / "p8utils" / "data" / "calibration"
#: The calibration set: ``renderer.calibration_images(CALIBRATION_COUNT, seed=CALIBRATION_SEED)``.
CALIBRATION_COUNT = 16
CALIBRATION_SEED = 12345


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
    names = renderer.sample_file_names(per_class)
    classes = "\n".join(f"- `{cls}/` — {per_class} images" for cls in renderer.CLASSES)
    return f"""# Synthetic fruit sample (project-generated)

{n_files} colour images, 100x100 RGB JPEG, {len(renderer.CLASSES)} classes x {per_class}, one folder per class.

These are **not photographs**: every image is drawn procedurally by `scripts/fruit_renderer.py`
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
metadata). `tests/scripts/test_make_sample.py` checks that this folder matches a fresh generation
(same names, decoded pixels within a small tolerance).
"""


def write_calibration(out: Path, n: int = CALIBRATION_COUNT, seed: int = CALIBRATION_SEED) -> list[Path]:
    """Write ``renderer.calibration_images(n, seed)`` as ``<out>/calibration_<i>.png`` (lossless).

    Stale ``calibration_*.png`` files are removed first; anything else in ``out``
    makes it refuse (``SystemExit``), as for the sample.
    """
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out={str(out)!r} is a file. Fix: pass a folder (e.g. {CALIBRATION_DIR}).")
    stale = sorted(out.glob("*")) if out.exists() else []
    foreign = [p.name for p in stale if not (p.is_file() and p.name.startswith("calibration_") and p.suffix == ".png")]
    if foreign:
        raise SystemExit(
            f"--out={str(out)!r} holds files that are not calibration images ({', '.join(foreign[:5])}). "
            "Refusing to wipe it. Fix: pass an empty or new folder, or remove those files yourself."
        )
    images = renderer.calibration_images(n, seed=seed)  # validates n and seed before anything is deleted
    for path in stale:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, img in enumerate(images):
        path = out / f"calibration_{i:02d}.png"
        img.save(path, format="PNG", optimize=False)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments; write the sample (wiping stale images, then the README) or the calibration set."""
    parser = argparse.ArgumentParser(description="Regenerate the synthetic fruit image sample.")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder (default: data_sample/ of the repo; with --calibration: p8utils/data/calibration/)",
    )
    parser.add_argument("--per-class", type=int, default=10, help="images per class (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole sample (default: 0)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default: 90)")
    parser.add_argument(
        "--calibration", action="store_true",
        help=f"write the offline weights' {CALIBRATION_COUNT} calibration PNGs (seed {CALIBRATION_SEED}) instead",
    )
    args = parser.parse_args(argv)

    if args.calibration:
        written = write_calibration(args.out or CALIBRATION_DIR)
        print(f"wrote {len(written)} calibration images to {args.out or CALIBRATION_DIR}")
        return 0
    if args.per_class < 1:
        parser.error(f"--per-class={args.per_class} must be >= 1. Fix: pass e.g. --per-class 10.")
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality={args.quality} must be in [1, 95]. Fix: pass e.g. --quality 90.")
    if args.seed < 0:
        parser.error(f"--seed={args.seed} must be >= 0. Fix: pass e.g. --seed 0.")
    out: Path = args.out or REPO / "data_sample"
    stale = _stale_files(out)
    for path in stale:
        path.unlink()
    for folder in sorted({p.parent for p in stale}):
        if not any(folder.iterdir()):
            folder.rmdir()
    written = renderer.generate_sample(out, n_per_class=args.per_class, seed=args.seed, quality=args.quality)
    with open(out / README, "w", encoding="utf-8", newline="\n") as fh:  # LF on every OS
        fh.write(_readme(out, args.per_class, args.seed, args.quality, len(written)))
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} images ({total / 1024:.0f} KiB) in {len(renderer.CLASSES)} classes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
