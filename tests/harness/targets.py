"""Where a test's inputs and outputs live: a local folder or the S3 emulator, behind one small object.

The reliability tests (``tests/test_reliability.py``, ``tests/test_failures.py``) run on both: a
:class:`Target` names folders (:meth:`Target.out`: a local path or ``s3://<bucket>/<name>``), puts input
files there (:meth:`Target.put`), and gives the environment of a ``python -m p8utils`` subprocess
(:meth:`Target.env`). Assertions that must hold on both go through :mod:`p8utils.storage`, which works on
local paths and S3 URIs alike; the helpers here (:func:`read_parquet`, :func:`read_folder`, :func:`tree`)
read what a run wrote without Spark (parquet files through ``storage.read_bytes``).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pandas as pd

from p8utils import storage

from .s3_emulator import S3Emulator

TARGETS = ("local", "s3")


class Target:
    """A local folder (``kind="local"``, below ``root``) or a fresh emulator bucket (``kind="s3"``).

    Parameters
    ----------
    kind : str
        ``"local"`` or ``"s3"``.
    root : Path
        The test's temporary folder (local outputs and inputs go there).
    s3 : S3Emulator, optional
        The emulator (``kind="s3"``); a bucket is made for the target.
    pythonpath : str
        ``PYTHONPATH`` of the subprocesses (the repository root).
    jars : iterable of Path
        The S3A connector's jars, for a subprocess's Spark (``kind="s3"``).
    """

    def __init__(self, kind: str, root: Path, s3: Optional[S3Emulator] = None, *, pythonpath: str = "",
                 jars: Iterable[Path] = ()) -> None:
        if kind not in TARGETS or (kind == "s3") != (s3 is not None):
            raise ValueError(f"kind={kind!r} with s3={s3!r}")
        self.kind, self.root, self.s3, self._pythonpath, self._jars = kind, Path(root), s3, pythonpath, tuple(jars)
        self.bucket = s3.bucket("rel") if s3 is not None else None

    @property
    def local(self) -> bool:
        return self.kind == "local"

    def __repr__(self) -> str:
        return f"Target({self.kind!r}, {self.out('')!r})"

    def out(self, name: str) -> str:
        """The folder ``name`` of this target: ``<root>/<name>`` or ``s3://<bucket>/<name>``."""
        return str(self.root / name) if self.local else f"s3://{self.bucket}/{name}".rstrip("/")

    def put(self, name: str, files: Iterable[Path], rename: str = "") -> str:
        """Copy sample ``files`` into the folder ``name`` as ``<class>/<rename><file name>``; return the folder.

        Locally the files are copied with their times (``shutil.copy2``); on S3 each is one PutObject.
        """
        folder = self.out(name)
        for f in files:
            self.write(storage.join(folder, f.parent.name, rename + f.name), f, like=f)
        return folder

    def write(self, uri: str, source: Path, like: Optional[Path] = None) -> None:
        """Write the bytes of ``source`` at ``uri`` (locally with ``like``'s times, as ``shutil.copy2``)."""
        if self.local:
            dest = storage.local_path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        else:
            storage.write_bytes(uri, source.read_bytes())

    def row_path(self, uri: str) -> str:
        """The ``path`` of the features row of the input file ``uri`` (``file:<path>`` locally, the URI on S3)."""
        return f"file:{uri}" if self.local else uri

    def env(self) -> Dict[str, str]:
        """Environment of a ``python -m p8utils`` subprocess writing to this target."""
        base = dict(os.environ) if self.local else self.s3.subprocess_env(self._jars)
        return dict(base, PYTHONPATH=self._pythonpath)


def read_parquet(uri: str) -> pd.DataFrame:
    """One parquet file, local or on S3 (its bytes through :func:`p8utils.storage.read_bytes`)."""
    if storage.is_local(uri):
        return pd.read_parquet(uri)
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def read_folder(uri: str) -> pd.DataFrame:
    """Every data file of a parquet folder, as a plain reader of the folder sees it (pyarrow's rules: files whose
    name starts with ``_`` or ``.`` are left out), whether or not the manifest names them."""
    if storage.is_local(uri):
        return pd.read_parquet(uri)
    names = [n for n in storage.list_dir(uri) if not n.startswith(("_", "."))]
    return pd.concat([read_parquet(storage.join(uri, n)) for n in names], ignore_index=True)


def tree(uri: str) -> Dict[str, int]:
    """{path relative to ``uri``: size} of every file below the folder ``uri`` (empty when absent)."""
    if storage.is_local(uri):
        folder = storage.local_path(uri)
        return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    _, bucket, key = storage.split_s3(uri)
    prefix = key.rstrip("/") + "/"
    try:
        return {o["Key"][len(prefix):]: int(o["Size"]) for o in storage.iter_s3_objects(uri)}
    except FileNotFoundError:
        return {}


def part_files(folder: str) -> List[str]:
    """Names of the ``part-*`` files directly in ``folder`` (local or S3)."""
    return [n for n in storage.list_dir(folder) if n.startswith("part-")]
