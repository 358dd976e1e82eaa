"""Run notebook 01 then notebook 03 headless (papermill) into one run folder: what `make run` does.

Layout of the run folder::

    <run>/features/ pca/ manifest.json      notebook 01 (pipeline.run)
    <run>/figures/*.png                     notebook 01: sample images, variance, PC1-PC2
    <run>/analysis/figures/*.png            notebook 03: scree + cumulative, PC1-PC2, PC1-PC3, 3-D
    <run>/analysis/variance_table.csv       notebook 03: k -> cumulative explained variance
    <run>/notebooks/01_local_sample.ipynb   the executed notebooks (outputs included)
    <run>/notebooks/03_pca_analysis.ipynb

Notebook 01 refuses a non-empty output folder (mode "error"), so papermill writes the executed 01 into a
sibling staging folder while it runs; it is moved into <run>/notebooks/ afterwards, also when a cell failed.

Usage: .venv/bin/python scripts/run_notebooks.py [--run-dir runs/x] [--input data_sample] [--weights auto]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="", help="run folder to create (default: runs/<timestamp>)")
    p.add_argument("--input", default="data_sample", help="images folder or URI [data_sample]")
    p.add_argument("--weights", default="auto", help="imagenet | offline | auto | <.h5 path> [auto]")
    p.add_argument("--master", default="local[2]", help="Spark master of the notebooks' sessions [local[2]]")
    p.add_argument("--kernel", default="p8utils", help="Jupyter kernel running the notebooks [p8utils]")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="extra parameter for notebook 01 (repeatable; VALUE is parsed as YAML like papermill -p)")
    return p


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    names = KernelSpecManager().find_kernel_specs()
    if name not in names:
        sys.exit(f"Jupyter kernel {name!r} is not installed (found: {', '.join(sorted(names))}). "
                 "Fix: `make kernel` (registers the project's .venv as the 'p8utils' kernel) or --kernel python3.")


def _execute(name: str, out: Path, parameters: Dict[str, object], kernel: str) -> Optional[str]:
    """Run notebooks/<name>.ipynb; return None, or the error text when a cell failed."""
    import papermill as pm

    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"== {name}: papermill -k {kernel} -> {out}", flush=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                            kernel_name=kernel, cwd=str(ROOT), progress_bar=True,
                            request_save_on_cell_execute=True)
    except pm.PapermillExecutionError as exc:
        return f"{exc.ename}: {exc.evalue}"
    print(f"== {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return None


def _yaml_value(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from p8utils.notebook import paths, summaries

    _check_kernel(args.kernel)
    run = Path(paths.resolve_path(args.run_dir) if args.run_dir else paths.new_run()).absolute()
    if run.exists() and any(run.iterdir()):
        sys.exit(f"--run-dir {run} exists and is not empty. Fix: pass a new folder (or omit it: runs/<timestamp>).")
    notebooks = run / "notebooks"
    staging = run.parent / f".{run.name}.executing"
    staging.mkdir(parents=True, exist_ok=True)

    params01: Dict[str, object] = {"input": args.input, "output": str(run), "weights": args.weights,
                                   "master": args.master}
    params01.update({k: _yaml_value(v) for k, v in args.parameter})
    try:
        error = _execute("01_local_sample", staging / "01_local_sample.ipynb", params01, args.kernel)
    finally:
        executed = staging / "01_local_sample.ipynb"
        if executed.exists():
            notebooks.mkdir(parents=True, exist_ok=True)
            shutil.move(str(executed), str(notebooks / executed.name))
        shutil.rmtree(staging, ignore_errors=True)
    if error:
        print(f"\nnotebook 01 failed: {error}\nthe executed notebook shows where: "
              f"{notebooks / '01_local_sample.ipynb'}", file=sys.stderr)
        return 1

    params03 = {"features_path": str(run), "output_path": str(run / "analysis"), "master": args.master}
    error = _execute("03_pca_analysis", notebooks / "03_pca_analysis.ipynb", params03, args.kernel)
    if error:
        print(f"\nnotebook 03 failed: {error}\nthe executed notebook shows where: "
              f"{notebooks / '03_pca_analysis.ipynb'}", file=sys.stderr)
        return 1

    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    print()
    print(summaries.run_summary(manifest))
    print(f"\nRun folder: {run}")
    print("  executed notebooks:")
    for nb in sorted(notebooks.glob("*.ipynb")):
        print(f"    {nb}")
    print("  figures:")
    for png in sorted(run.glob("figures/*.png")) + sorted(run.glob("analysis/figures/*.png")):
        print(f"    {png}")
    print(f"  table   : {run / 'analysis' / 'variance_table.csv'}")
    print(f"  manifest: {run / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
