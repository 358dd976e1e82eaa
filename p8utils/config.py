"""The run parameters, declared once: :class:`RunConfig`.

Each field of :class:`RunConfig` carries its type, default, allowed values
and help text. Everything else derives from it: :func:`p8utils.pipeline.run`
takes a ``RunConfig``; the command line (``python -m p8utils run``) is
generated from the fields (:func:`p8utils.cli.build_parser`); the manifest's
``parameters`` are :meth:`RunConfig.to_manifest`; the notebooks' parameters
cells are tested against the fields (same names, types, help). Adding an
option means adding a field here, plus its use.

Examples
--------
>>> from p8utils.config import RunConfig
>>> config = RunConfig(input="data_sample", output="runs/demo", weights="offline")
>>> config.variance, config.k           # no k given: the variance target chooses k
(0.95, None)
>>> RunConfig(input="data_sample", output="runs/demo", k=0)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
ParameterError: k=0 is not valid: it must be a positive integer or None. Fix: e.g. k=50.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

from p8utils import storage
from p8utils.engines import CALIBRATION_IMAGES, DEFAULT_ENGINE, ENGINES, get_engine
from p8utils.errors import ParameterError
from p8utils.featurize import DEFAULT_BATCH_SIZE
from p8utils.images import (
    DEFAULT_EXTENSIONS,
    DEFAULT_IMAGES_PER_PARTITION,
    DEFAULT_MAX_PIXELS,
    READERS,
    images_per_task,
    normalise_extensions,
)
from p8utils.models import DEFAULT_IMAGE_SIZE, IMAGE_SIZES, MODELS, WEIGHT_MODES, get_spec
from p8utils.pca import DEFAULT_VARIANCE, check_pca_params
from p8utils.validation import check_choice, check_int

__all__ = ["MODEL_PARAMETERS", "MODES", "REQUIRED", "FeatureIdentity", "Parameter", "RunConfig", "parameters"]

#: What to do when the output folder already holds something: refuse, replace
#: it, or featurize only the files that are new or changed since that run.
MODES: Tuple[str, ...] = ("error", "overwrite", "incremental")


def _param(help: str, *, choices: Optional[Callable[[], Sequence[Any]]] = None, kind: str = "str",
           group: Optional[str] = None, check: Optional[Callable[[str, Any], Any]] = None) -> Dict[str, Any]:
    """Field metadata of a run parameter (see :class:`Parameter`)."""
    return {"help": help, "choices": choices, "kind": kind, "group": group, "check": check}


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{name}={value!r} is empty or not a string. Fix: pass a folder path or a URI.")
    return value.strip()


def _check_location(name: str, value: Any) -> str:
    return storage.resolve_location(name, _check_text(name, value))


def _check_weights(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{name}={value!r} is not valid. Fix: pass one of {list(WEIGHT_MODES)} "
                             "or the path/URI of a weights file.")
    return value.strip()


def _check_master(name: str, value: Any) -> Optional[str]:
    if value is None or (isinstance(value, str) and value.strip()):
        return None if value is None else value.strip()
    raise ParameterError(f"{name}={value!r} is not valid. Fix: e.g. 'local[2]', 'spark://host:7077' or None.")


@dataclass(frozen=True)
class RunConfig:
    """Every parameter of a pipeline run, checked when the object is made.

    Help texts are single lines without ``=`` or ``#``: they are also the
    comments of the notebooks' parameters cells, which papermill parses.

    Raises
    ------
    ParameterError
        A parameter is wrong; the message names it, the bad value and the fix.
        No Spark job has started.
    """

    input: str = field(metadata=_param(
        "images: folder or URI (s3://bucket/prefix) holding one sub-folder per class (the label is the folder name)",
        check=_check_location))
    output: str = field(metadata=_param(
        "run folder or URI for features/, pca/, manifest.json (and the notebooks' figures/)", check=_check_location))
    model: str = field(default="mobilenet_v2", metadata=_param(
        "feature extractor: mobilenet_v2 (1280 features) or resnet50 (2048)", choices=lambda: sorted(MODELS),
        check=lambda n, v: get_spec(v).name))
    weights: str = field(default="imagenet", metadata=_param(
        "'imagenet' (Keras download/cache; an error naming the remedy when unreachable), 'offline' (seeded "
        "weights with BatchNorm recalibrated on fruit images: deterministic, NOT ImageNet, tests/demos only), "
        "'auto' (imagenet if reachable, else offline with a loud warning) or a path/URI of a Keras .h5 file",
        check=_check_weights))
    engine: str = field(default=DEFAULT_ENGINE, metadata=_param(
        "inference engine: 'tflite' (the model converted once on the driver, run with XNNPACK), 'keras' "
        "(TensorFlow tf.function; features agree with tflite within 1e-4 relative) or 'tflite-int8' (full-integer "
        f"quantization calibrated on {CALIBRATION_IMAGES} input images: features about 0.96 cosine to fp32, "
        "see the benchmark)",
        choices=lambda: list(ENGINES)))
    image_size: int = field(default=DEFAULT_IMAGE_SIZE, metadata=_param(
        "side of the square model input in pixels (images are resized to it): MobileNetV2 has ImageNet weights at "
        "each allowed size (96 and 128 are near the 100 px Fruits-360 photos and faster); resnet50: 224 only",
        kind="int", choices=lambda: IMAGE_SIZES))
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata=_param(
        "images per model call, 1 to 4096 (memory about 0.6 MB per image)", kind="int",
        check=lambda n, v: check_int(n, v, 1, 4096, example=DEFAULT_BATCH_SIZE)))
    k: Optional[int] = field(default=None, metadata=_param(
        "principal components to keep (1 to the feature width); None: the variance target chooses k",
        kind="int", group="pca", check=lambda n, v: check_int(n, v, 1, optional=True, example=50)))
    variance: Optional[float] = field(default=None, metadata=_param(
        f"keep the smallest k whose cumulative explained variance reaches this fraction in (0, 1]; "
        f"None with k None: {DEFAULT_VARIANCE}", kind="float", group="pca"))
    seed: int = field(default=0, metadata=_param(
        "seed of the offline weights (and of the 'auto' fallback)", kind="int",
        check=lambda n, v: check_int(n, v, 0, example=0)))
    mode: str = field(default="error", metadata=_param(
        "if the output is not empty: 'error' refuses (safe default), 'overwrite' replaces it, 'incremental' "
        "featurizes only new or changed files (key: path + size + mtime) and refits PCA on the whole table",
        choices=lambda: MODES))
    extensions: Tuple[str, ...] = field(default=DEFAULT_EXTENSIONS, metadata=_param(
        "file extensions that count as images, case-insensitive (CLI: comma-separated)", kind="list",
        check=lambda n, v: normalise_extensions(v)))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=_param(
        "images declaring more pixels are reported as error 'too_large', never decoded", kind="int",
        check=lambda n, v: check_int(n, v, 1, example=DEFAULT_MAX_PIXELS)))
    images_per_partition: Optional[int] = field(default=None, metadata=_param(
        "target images per Spark task: fewer, larger tasks amortise the per-task cost; never fewer tasks than "
        f"cores; None: {DEFAULT_IMAGES_PER_PARTITION} at 224 px, scaled with the input's pixels (1,394 at 96)",
        kind="int", check=lambda n, v: check_int(n, v, 1, optional=True, example=DEFAULT_IMAGES_PER_PARTITION)))
    reader: str = field(default="auto", metadata=_param(
        "how files are listed and read: 'python' (local folders: os.scandir; s3:// folders: ListObjectsV2, one "
        "request per 1,000 objects; each Python worker reads its files, one GetObject per S3 object), 'spark' "
        "(Spark's file index and binaryFile source: any Hadoop filesystem, several requests per S3 object), "
        "'auto' (python for local, s3:// and file-list inputs, spark for other URIs)", choices=lambda: READERS))
    master: Optional[str] = field(default=None, metadata=_param(
        "Spark master of a new session, e.g. local[2] or spark://host:7077 (None: local[*]); ignored when a "
        "session exists (spark-submit, Livy)", check=_check_master))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if meta["check"] is not None:  # its own message first (e.g. model: "is not supported")
                object.__setattr__(self, f.name, meta["check"](f.name, value))
            elif meta["choices"] is not None:
                check_choice(f.name, value, meta["choices"]())
        if self.k is None and self.variance is None:
            object.__setattr__(self, "variance", DEFAULT_VARIANCE)
        check_pca_params(self.k, self.variance, get_spec(self.model, self.image_size).width)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> RunConfig:
        """Build a config from the entries of ``values`` that are parameter names.

        Parameters
        ----------
        values : mapping
            E.g. a notebook's ``globals()`` after papermill injected its
            parameters; other keys are ignored.
        **overrides
            Values that replace those of ``values`` (e.g. resolved paths).

        Returns
        -------
        RunConfig
        """
        names = {f.name for f in dataclasses.fields(cls)}
        merged = {k: v for k, v in values.items() if k in names}
        merged.update(overrides)
        return cls(**merged)

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with ``changes`` applied (checked again)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "k" in changes and changes["k"] is not None and "variance" not in changes:
            current["variance"] = None
        current.update(changes)
        return RunConfig(**current)

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        """Return the parameter names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def task_images(self) -> int:
        """Images per Spark task: ``images_per_partition``, or the default for ``image_size``.

        See :func:`p8utils.images.images_per_task`.
        """
        return images_per_task(self.image_size, self.images_per_partition)

    @property
    def is_local(self) -> bool:
        """True when both input and output are local paths (checked without a JVM)."""
        return storage.is_local(self.input) and storage.is_local(self.output)

    def to_manifest(self) -> Dict[str, Any]:
        """Return the parameters as JSON-ready values (the manifest's ``parameters``)."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class Parameter:
    """The description of one run parameter, read from :class:`RunConfig`'s fields (one attribute each)."""

    #: Field name (CLI flag ``--name-with-dashes``).
    name: str
    #: ``"str"``, ``"int"``, ``"float"`` or ``"list"`` (of strings).
    kind: str
    #: Default value; :data:`REQUIRED` for ``input`` and ``output``.
    default: Any
    #: One line (also the comment of the notebooks' parameters cells).
    help: str
    #: Allowed values, when the parameter is an enumeration; else None.
    choices: Optional[Tuple[Any, ...]]
    #: Parameters sharing a group are mutually exclusive (``k`` / ``variance``); else None.
    group: Optional[str]

    @property
    def required(self) -> bool:
        """True when the parameter has no default."""
        return self.default is REQUIRED


#: Default of a parameter that has none (``input``, ``output``).
REQUIRED = dataclasses.MISSING


def parameters() -> Tuple[Parameter, ...]:
    """Describe every run parameter, in declaration order.

    Returns
    -------
    tuple of Parameter
    """
    out = []
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        choices = tuple(meta["choices"]()) if meta["choices"] is not None else None
        out.append(Parameter(f.name, meta["kind"], f.default, meta["help"], choices, meta["group"]))
    return tuple(out)


@dataclass(frozen=True)
class FeatureIdentity:
    """What makes features what they are: two runs with equal identities give comparable features.

    Declared once, used by incremental runs (a table never mixes two
    identities), :func:`p8utils.pipeline.project` (the run's parameters
    :attr:`PARAMETERS` are its defaults, its weights are required) and the
    CLI (``check``'s options, ``project``'s inherited ones).

    Attributes
    ----------
    model : str
        The feature extractor (``mobilenet_v2``, ``resnet50``).
    weights_sha256 : str
        SHA-256 (hex) of the weights the features were computed with.
    image_size : int
        Side of the square model input in pixels.
    precision : str
        ``"float32"`` or ``"int8 (calibrated)"`` (engines of one precision
        agree within float error; :data:`p8utils.engines.ENGINES`).
    """

    model: str
    weights_sha256: str
    image_size: int
    precision: str

    #: The run parameters that decide the identity (with the weights they resolve to).
    PARAMETERS: ClassVar[Tuple[str, ...]] = ("model", "weights", "seed", "engine", "image_size")

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any], weights_sha256: str) -> FeatureIdentity:
        """Build the identity from run parameters (a manifest's ``parameters`` or :meth:`RunConfig.to_manifest`).

        Parameters
        ----------
        parameters : mapping
            ``model``, ``engine`` and (default :data:`p8utils.models.DEFAULT_IMAGE_SIZE`) ``image_size``.
        weights_sha256 : str
            SHA-256 of the resolved weights.
        """
        return cls(str(parameters["model"]), str(weights_sha256),
                   int(parameters.get("image_size", DEFAULT_IMAGE_SIZE)),
                   "int8 (calibrated)" if get_engine(parameters.get("engine", DEFAULT_ENGINE)).calibrated
                   else "float32")

    @classmethod
    def from_config(cls, config: RunConfig, weights_sha256: str) -> FeatureIdentity:
        """Return the identity of a run of ``config`` whose weights resolved to ``weights_sha256``."""
        return cls.from_parameters(config.to_manifest(), weights_sha256)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> FeatureIdentity:
        """Return the identity of a committed run, from its manifest (``parameters`` and ``weights.sha256``)."""
        return cls.from_parameters(manifest["parameters"], manifest["weights"]["sha256"])

    @staticmethod
    def parameters_of(parameters: Mapping[str, Any]) -> Dict[str, Any]:
        """Return the entries of ``parameters`` (e.g. a manifest's) that decide the identity: :attr:`PARAMETERS`."""
        return {k: v for k, v in parameters.items() if k in FeatureIdentity.PARAMETERS and k in RunConfig.names()}

    def describe(self) -> Dict[str, Any]:
        """Return the identity as shown: ``model``, ``weights sha256`` (12 hex digits), ``image_size``, precision."""
        return {"model": self.model, "weights sha256": self.weights_sha256[:12] + "…", "image_size": self.image_size,
                "precision": self.precision}

    def differences(self, other: FeatureIdentity) -> Dict[str, Tuple[Any, Any]]:
        """Return what differs from ``other``: shown name -> (this value, ``other``'s); empty when comparable."""
        mine, theirs = self.describe(), other.describe()
        return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


#: The run parameters that make its features what they are (:attr:`FeatureIdentity.PARAMETERS`).
MODEL_PARAMETERS: Tuple[str, ...] = FeatureIdentity.PARAMETERS
