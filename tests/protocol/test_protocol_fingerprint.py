"""PROTOCOL.md §3.3: the model fingerprint can be computed from the document alone.

The test vectors are read out of PROTOCOL.md and recomputed here by the recipe as the
document words it, with this file's own code; then the reference implementation must give
the same values, and so must the default model built by the models package.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from simultrain.shared.errors import ConfigError
from simultrain.shared.models import architecture_fingerprint, get_model_spec, model_architecture
from simultrain.shared.protocol import Architecture, TensorSpec, cloud_stage_digest

DOC = Path(__file__).resolve().parents[2] / "PROTOCOL.md"


def vectors() -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON vectors and the text blocks between PROTOCOL.md's fingerprint markers."""
    doc = DOC.read_text(encoding="utf-8")
    markers = r"<!-- fingerprint-vectors:begin -->(.*?)<!-- fingerprint-vectors:end -->"
    match = re.search(markers, doc, re.S)
    assert match, "PROTOCOL.md lost its fingerprint-vectors markers"
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", match.group(1), re.S | re.M)
    found = [json.loads(body) for kind, body in blocks if kind == "json"]
    texts = [body for kind, body in blocks if not kind]
    return found, texts


# -- the recipe, as §3.3 words it ----------------------------------------------------------


def spelled(shape: list[int]) -> str:
    """Decimal dimensions joined by ',' inside brackets, no spaces; a scalar is []."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def line(kind: str, tensor: dict[str, Any]) -> str:
    return f"{kind} {tensor['name']} {tensor['dtype']} {spelled(tensor['shape'])}"


def in_byte_order(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(tensors, key=lambda t: bytes(t["name"], "utf-8"))


def text_of(lines: list[str]) -> bytes:
    return b"".join(text.encode("utf-8") + b"\n" for text in lines)


def cloud_text(cloud_stage: list[dict[str, Any]]) -> bytes:
    lines = ["simultrain-cloud-stage 1"]
    lines += [line("cloud", t) for t in in_byte_order(cloud_stage)]
    return text_of(lines)


def fingerprint_text(architecture: dict[str, Any]) -> bytes:
    lines = [
        "simultrain-fingerprint 1",
        "input " + spelled(architecture["input_shape"]),
        "cut " + spelled(architecture["cut_shape"]),
    ]
    lines += [line("edge", t) for t in in_byte_order(architecture["edge_stage"])]
    lines.append("cloud " + architecture["cloud_stage_digest"])
    return text_of(lines)


# -- the tests ------------------------------------------------------------------------------


def test_the_document_has_its_vectors() -> None:
    found, texts = vectors()
    assert len(found) == 2 and len(texts) == 3


@pytest.mark.parametrize("index", [0, 1])
def test_each_vector_is_the_recipe_applied_to_its_inputs(index: int) -> None:
    vector = vectors()[0][index]
    architecture = vector["architecture"]
    digest = hashlib.sha256(cloud_text(vector["cloud_stage"])).hexdigest()
    assert digest == architecture["cloud_stage_digest"]
    assert hashlib.sha256(fingerprint_text(architecture)).hexdigest() == vector["model_fingerprint"]


def test_the_texts_shown_are_the_texts_hashed() -> None:
    (toy, imu), (toy_cloud, toy_text, imu_text) = vectors()
    assert toy_cloud.encode() == cloud_text(toy["cloud_stage"])
    assert len(toy_cloud.encode()) == 81  # as the document says
    assert toy_text.encode() == fingerprint_text(toy["architecture"])
    assert imu_text.encode() == fingerprint_text(imu["architecture"])


@pytest.mark.parametrize("index", [0, 1])
def test_the_reference_implementation_gives_the_vectors(index: int) -> None:
    vector = vectors()[0][index]
    cloud = [TensorSpec.from_json(t) for t in vector["cloud_stage"]]
    assert cloud_stage_digest(cloud) == vector["architecture"]["cloud_stage_digest"]
    architecture = Architecture.from_json(vector["architecture"])
    assert architecture.fingerprint == vector["model_fingerprint"]
    assert architecture.text.encode() == fingerprint_text(vector["architecture"])


def test_the_default_model_is_the_documented_vector() -> None:
    imu = vectors()[0][1]
    spec = get_model_spec("imu-cnn1d")
    assert model_architecture(spec).to_json() == imu["architecture"]
    assert architecture_fingerprint(spec) == imu["model_fingerprint"]


def test_every_part_of_the_architecture_changes_the_fingerprint() -> None:
    base = vectors()[0][0]["architecture"]
    first, rest = base["edge_stage"][0], base["edge_stage"][1:]
    variants = [
        {**base, "input_shape": [3]},
        {**base, "cut_shape": [3, 1]},
        {**base, "cloud_stage_digest": "0" * 64},
        {**base, "edge_stage": [{**first, "shape": [1]}, *rest]},
        {**base, "edge_stage": [{**first, "dtype": "float32"}, *rest]},
        {**base, "edge_stage": [{**first, "name": "v"}, *rest]},
    ]
    prints = {Architecture.from_json(a).fingerprint for a in [base, *variants]}
    assert len(prints) == len(variants) + 1
    # The order the tensors are listed in is not part of it (byte order is).
    shuffled = {**base, "edge_stage": list(reversed(base["edge_stage"]))}
    assert Architecture.from_json(shuffled).fingerprint == Architecture.from_json(base).fingerprint


@pytest.mark.parametrize("name", ["two words", "line\nbreak", "", "tab\there"])
def test_a_name_that_would_make_the_text_ambiguous_is_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        TensorSpec(name, "float32", (1,))


def test_a_repeated_name_is_refused() -> None:
    twice = (TensorSpec("w", "float32", (1,)), TensorSpec("w", "float32", (2,)))
    with pytest.raises(ConfigError, match="repeat"):
        Architecture((1,), (1,), twice, "0" * 64).fingerprint  # noqa: B018
