"""RunConfig: the run parameters declared once; the CLI and the manifest derive from it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from p8utils import config as cfg
from p8utils.cli import build_parser
from p8utils.config import RunConfig, parameters
from p8utils.errors import ParameterError


def _run_parser():
    return build_parser()._subparsers._group_actions[0].choices["run"]


def test_defaults_and_the_variance_rule():
    c = RunConfig(input="data_sample", output="runs/x")
    assert (c.k, c.variance, c.weights, c.mode, c.extensions) == (None, 0.95, "imagenet", "error", ("jpg", "jpeg"))
    assert RunConfig(input="a", output="b", k=20).variance is None
    assert RunConfig(input="a", output="b", variance=0.9).k is None
    assert RunConfig(input="a", output="b", extensions=".JPG, png").extensions == ("jpg", "png")


@pytest.mark.parametrize("changes,match", [
    ({"k": 0}, "k=0 is not valid: it must be a positive integer"),
    ({"k": 2000}, "larger than the feature width 1280"),
    ({"k": 3, "variance": 0.9}, "give exactly one"),
    ({"variance": 1.5}, r"outside \(0, 1\]"),
    ({"batch_size": 0}, r"batch_size=0 .* \[1, 4096\]"),
    ({"batch_size": True}, "batch_size=True"),
    ({"model": "vgg"}, "model='vgg' is not supported"),
    ({"engine": "onnx"}, "engine='onnx' is not valid"),
    ({"mode": "append"}, "mode='append' is not valid"),
    ({"reader": "hdfs"}, "reader='hdfs' is not valid"),
    ({"extensions": ["j?g"]}, "extensions"),
    ({"input": ""}, "input='' is empty"),
    ({"weights": ""}, "weights=''"),
    ({"images_per_partition": 0}, "images_per_partition=0"),
    ({"max_pixels": -1}, "max_pixels=-1"),
    ({"seed": 1.5}, "seed=1.5"),
    ({"master": ""}, "master=''"),
])
def test_every_bad_value_names_the_parameter_and_the_fix(changes, match):
    with pytest.raises(ParameterError, match=match) as info:
        RunConfig(**{"input": "in", "output": "out", **changes})
    assert "Fix" in str(info.value)


def test_one_declaration_feeds_the_cli():
    """Every RunConfig field is a `run` option with the same default, choices and help."""
    actions = {a.dest: a for a in _run_parser()._actions if a.dest not in ("help", "verbose", "explorer")}
    declared = {p.name: p for p in parameters()}
    assert set(actions) == set(declared) == {f.name for f in dataclasses.fields(RunConfig)}
    for name, p in declared.items():
        a = actions[name]
        assert a.option_strings == ["--" + name.replace("_", "-")]
        assert a.help == p.help and (tuple(a.choices) if a.choices else None) == p.choices
        assert a.required is p.required
        if not p.required:
            assert a.default == (",".join(p.default) if p.kind == "list" else p.default)


def test_cli_arguments_make_the_same_config():
    args = _run_parser().parse_args(["--input", "in", "--output", "out", "--k", "7", "--extensions", "jpg,png",
                                     "--batch-size", "8", "--weights", "offline"])
    got = RunConfig.from_mapping(vars(args))
    assert got == RunConfig(input="in", output="out", k=7, extensions=("jpg", "png"), batch_size=8, weights="offline")


def test_manifest_parameters_are_json_and_round_trip():
    c = RunConfig(input="in", output="out", k=5, extensions=("jpg", "png"))
    m = json.loads(json.dumps(c.to_manifest()))
    assert list(m) == [f.name for f in dataclasses.fields(RunConfig)]
    assert RunConfig(**m) == c


def test_from_mapping_ignores_other_names_and_applies_overrides():
    notebook_globals = {"input": "rel", "output": "", "n_show": 16, "spark": object(), "weights": "offline"}
    c = RunConfig.from_mapping(notebook_globals, input="/abs/rel", output="/abs/runs/x")
    assert (c.input, c.output, c.weights) == ("/abs/rel", "/abs/runs/x", "offline")


def test_replace_checks_again():
    c = RunConfig(input="in", output="out")
    assert c.replace(k=4).k == 4 and c.replace(k=4).variance is None
    with pytest.raises(ParameterError):
        c.replace(batch_size=-1)


def test_help_texts_fit_a_papermill_parameters_cell():
    for p in parameters():
        assert "\n" not in p.help and "=" not in p.help and "#" not in p.help, p.name
    assert cfg.MODES == ("error", "overwrite", "incremental")


def test_feature_identity_is_declared_once_and_tells_differences():
    from p8utils.config import MODEL_PARAMETERS, FeatureIdentity

    assert MODEL_PARAMETERS == FeatureIdentity.PARAMETERS == ("model", "weights", "seed", "engine", "image_size")
    assert set(FeatureIdentity.PARAMETERS) <= set(RunConfig.names())
    config = RunConfig(input="data_sample", output="runs/x", weights="offline", engine="tflite-int8", image_size=128)
    mine = FeatureIdentity.from_config(config, "ab" * 32)
    assert (mine.model, mine.image_size, mine.precision) == ("mobilenet_v2", 128, "int8 (calibrated)")
    manifest = {"parameters": {"model": "mobilenet_v2", "engine": "keras", "weights": "offline", "seed": 0},
                "weights": {"sha256": "cd" * 32}}
    theirs = FeatureIdentity.from_manifest(manifest)
    assert theirs.image_size == 224 and theirs.precision == "float32", "an older manifest: the default size"
    assert theirs.differences(mine) == {"weights sha256": ("cd" * 6 + "…", "ab" * 6 + "…"), "image_size": (224, 128),
                                        "precision": ("float32", "int8 (calibrated)")}
    assert mine.differences(mine) == {}
    assert FeatureIdentity.parameters_of({**manifest["parameters"], "batch_size": 8, "k": 3}) == \
        {"model": "mobilenet_v2", "engine": "keras", "weights": "offline", "seed": 0}
