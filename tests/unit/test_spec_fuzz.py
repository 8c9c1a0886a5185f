"""Seeded random mutations of every shipped spec (``models/*.yaml``): each one must be refused.

Every mutation here is invalid by construction (a required key deleted, a key misspelt by one
character, a value of the wrong type, a bound crossed, min above max, an unknown ``{placeholder}``,
a misspelt or unknown hyperparameter), so none may load: each must raise ``SpecError`` whose
message names the mutated file and the field's dotted path. Anything else (a traceback of another
type, a silently accepted spec, a message without the field) fails the test. No services; about
a second per spec.
"""

from __future__ import annotations

import copy
import random
import string
import types
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import yaml
from pydantic import BaseModel

from flywheel.core.spec import (
    SOURCE_PLACEHOLDERS,
    ColumnRule,
    DataSpec,
    ParamRange,
    PipelineSpec,
    SpecError,
    VolumeRule,
    family_parameters,
    load_any_spec_file,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "models").glob("*.yaml"))
MUTATIONS_PER_SPEC = 300
SEED = 20261201
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Keys PerformanceSpec accepts as the PR-AUC spelling of its fields (a before-validator renames them).
ALIASES = {"max_pr_auc_drop", "min_pr_auc"}

Path_ = tuple[str, ...]


def _models_in(annotation: Any) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """(model, model of a dict's values) that an annotation holds, if any."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return None, args[1]
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            model, values = _models_in(arg)
            if model or values:
                return model, values
    return None, None


def nodes(data: dict, model: type[BaseModel], path: Path_ = ()) -> list[tuple[Path_, dict, type[BaseModel]]]:
    """Every mapping of the YAML that is validated as a model, with its path and model class."""
    out = [(path, data, model)]
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        sub, values = _models_in(field.annotation)
        if sub and isinstance(value, dict):
            out += nodes(value, sub, (*path, key))
        elif values and isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, dict):
                    out += nodes(item, values, (*path, key, name))
    return out


def _is_container(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return all(_is_container(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (dict, list) or (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def _misspell(name: str, rng: random.Random, taken: set[str]) -> str:
    letters = string.ascii_lowercase + "_"
    for _ in range(50):
        i = rng.randrange(len(name))
        how = rng.choice(["replace", "insert", "delete", "swap"])
        if how == "replace":
            new = name[:i] + rng.choice(letters) + name[i + 1:]
        elif how == "insert":
            new = name[:i] + rng.choice(letters) + name[i:]
        elif how == "delete" and len(name) > 1:
            new = name[:i] + name[i + 1:]
        elif i + 1 < len(name):
            new = name[:i] + name[i + 1] + name[i] + name[i + 2:]
        else:
            continue
        if new and new not in taken:
            return new
    raise AssertionError(f"no misspelling of {name!r} found")


def _get(raw: dict, path: Path_) -> dict:
    for key in path:
        raw = raw[key]
    return raw


def _dotted(*parts: str) -> str:
    return ".".join(parts)


# Each mutation takes (raw, nodes, rng) and returns (expected dotted path, what) or None when it
# does not apply to the spec; it edits ``raw`` in place.
def delete_required(raw: dict, found: list, rng: random.Random) -> tuple[str, str] | None:
    choices = [(p, k) for p, d, m in found for k in d if k in m.model_fields and m.model_fields[k].is_required()]
    if not choices:
        return None
    path, key = rng.choice(choices)
    del _get(raw, path)[key]
    return _dotted(*path, key), "required key deleted"


def rename_key(raw: dict, found: list, rng: random.Random) -> tuple[str, str] | None:
    choices = [(p, k, m) for p, d, m in found for k in d if k in m.model_fields or k in ALIASES]
    path, key, model = rng.choice(choices)
    node = _get(raw, path)
    new = _misspell(key, rng, set(model.model_fields) | ALIASES | set(node) | {"kind"})
    node[new] = node.pop(key)
    return _dotted(*path, new), f"key {key!r} misspelt"


def wrong_type(raw: dict, found: list, rng: random.Random) -> tuple[str, str] | None:
    choices = [(p, k, m.model_fields[k].annotation) for p, d, m in found for k in d if k in m.model_fields]
    path, key, annotation = rng.choice(choices)
    _get(raw, path)[key] = "fuzz-not-a-mapping" if _is_container(annotation) else {"fuzz": [1]}
    return _dotted(*path, key), "value of the wrong type"


def cross_bound(raw: dict, found: list, rng: random.Random) -> tuple[str, str] | None:
    choices = []
    for path, data, model in found:
        for key, value in data.items():
            field = model.model_fields.get(key)
            if field is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            for rule in field.metadata:
                for attr, beyond in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
                    bound = getattr(rule, attr, None)
                    if isinstance(rule, annotated_types.BaseMetadata) and bound is not None:
                        choices.append((path, key, bound + beyond))
    if not choices:
        return None
    path, key, value = rng.choice(choices)
    _get(raw, path)[key] = value
    return _dotted(*path, key), f"bound crossed ({value})"


def min_above_max(raw: dict, found: list, rng: random.Random) -> tuple[str, str] | None:
    pairs = {ColumnRule: ("min", "max"), VolumeRule: ("min_ratio", "max_ratio"), ParamRange: ("low", "high")}
    choices = [(p, d, pairs[m]) for p, d, m in found if m in pairs and (pairs[m][0] in d or pairs[m][1] in d)]
    if not choices:
        return None
    path, node, (low, high) = rng.choice(choices)
    node = _get(raw, path)
    if low in node and high in node:
        node[low], node[high] = max(node[low], node[high]) + 1, min(node[low], node[high])
    elif low in node:
        node[high] = node[low] - 1
    else:
        node[low] = node[high] + 1
    # ParamRange's own check names the range (its "low < high" message), the others the field.
    expected = _dotted(*path) if pairs.get(ParamRange) == (low, high) else _dotted(*path, low)
    return expected, f"{low} > {high}"


def unknown_placeholder(raw: dict, found: list, rng: random.Random) -> tuple[str, str] | None:
    name = rng.choice(["dss", "date", "homee", "day", "fuzz", "0", ""])
    assert name not in SOURCE_PLACEHOLDERS
    source = raw["dataset"]["source"]
    known = [p for p in sorted(SOURCE_PLACEHOLDERS) if "{" + p + "}" in source]
    if known and rng.random() < 0.5:
        raw["dataset"]["source"] = source.replace("{" + rng.choice(known) + "}", "{" + name + "}", 1)
    else:
        raw["dataset"]["source"] = source + "/{" + name + "}"
    return "dataset.source", f"placeholder {{{name}}}"


def misspelt_hyperparameter(raw: dict, found: list, rng: random.Random) -> tuple[str, str] | None:
    candidates = (raw.get("training") or {}).get("candidates") or {}
    choices = [(f, part, k) for f, c in candidates.items() for part in ("params", "search") for k in c.get(part, {})]
    if not choices:
        return None
    family, part, key = rng.choice(choices)
    node = candidates[family][part]
    if rng.random() < 0.8:
        new = _misspell(key, rng, set(family_parameters(family)) | set(node))
        node[new] = node.pop(key)
    else:
        new = _misspell("fuzz_param", rng, set(family_parameters(family)))
        node[new] = copy.deepcopy(node[key])
    return _dotted("training", "candidates", family, part, new), f"hyperparameter {key!r} → {new!r}"


MUTATIONS = [delete_required, rename_key, wrong_type, cross_bound, min_above_max, unknown_placeholder,
             misspelt_hyperparameter]


def _model_of(raw: dict) -> type[BaseModel]:
    return DataSpec if raw.get("kind") == "dataset" else PipelineSpec


@pytest.mark.parametrize("source", SPECS, ids=lambda p: p.name)
def test_every_mutation_of_a_spec_is_a_spec_error_naming_file_and_field(source: Path, tmp_path: Path):
    original = yaml.safe_load(source.read_text())
    target = tmp_path / source.name
    target.write_text(yaml.dump(original, Dumper=DUMPER, sort_keys=False))
    load_any_spec_file(target)  # the unmutated copy loads: every failure below is the mutation's
    rng = random.Random(f"{SEED}-{source.name}")
    tried: Counter[str] = Counter()
    for i in range(MUTATIONS_PER_SPEC):
        raw = copy.deepcopy(original)
        found = nodes({k: v for k, v in raw.items() if k != "kind"}, _model_of(raw))
        applied = None
        while applied is None:
            mutation = rng.choice(MUTATIONS)
            applied = mutation(raw, found, rng)
        expected, what = applied
        target.write_text(yaml.dump(raw, Dumper=DUMPER, sort_keys=False))
        with pytest.raises(SpecError) as caught:
            load_any_spec_file(target)
        message = str(caught.value)
        assert str(target) in message, f"#{i} {mutation.__name__} ({what}): the message names no file: {message}"
        assert expected in message, (f"#{i} {mutation.__name__} ({what}) at {expected}: "
                                     f"the message does not name the field: {message}")
        tried[mutation.__name__] += 1
    assert sum(tried.values()) == MUTATIONS_PER_SPEC
    print(f"{source.name}: {dict(sorted(tried.items()))}")


def test_every_family_declares_the_parameters_its_library_takes():
    """The declared sets (what a spec may name) are real arguments of each family's model, and
    every family class points at the set its entry point names."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from xgboost import XGBClassifier

    from flywheel.training import families
    from flywheel.training.families.torch_mlp import DEFAULTS

    for name in families.registered():
        assert families.get(name).parameters == family_parameters(name), name
    assert family_parameters("logistic_regression") <= set(LogisticRegression().get_params())
    assert family_parameters("linear") <= set(Ridge().get_params())
    assert family_parameters("xgboost") <= set(XGBClassifier().get_params())
    assert family_parameters("torch_mlp") == {*DEFAULTS, "width"}
