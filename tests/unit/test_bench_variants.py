"""Manifest variants for the benchmark: written as TOML, read back as the same manifest plus the settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from ebbtide.manifest import load_manifest
from ebbtide.workload.bench import BenchOptions, tomlwrite
from ebbtide.workload.bench.implementations import CANDIDATES, DEFAULT, FASTEST_KNOWN, Variant, candidate, write_variant

REPO = Path(__file__).resolve().parents[2]


def test_toml_writer_round_trips_through_tomllib() -> None:
    table = {
        "a": 1,
        "b": 2.5,
        "c": 'x "quoted" \\ é',
        "d": [1, 2],
        "e": {"f": True, "g": {"h": []}, "skip": None},
        "weird key": {},
        "none": None,
    }
    expected = {k: v for k, v in table.items() if v is not None}
    expected["e"] = {"f": True, "g": {"h": []}}
    assert tomllib.loads(tomlwrite.dumps(table)) == expected


def test_toml_writer_refuses_what_toml_cannot_say() -> None:
    with pytest.raises(ValueError):
        tomlwrite.dumps({"x": float("nan")})
    with pytest.raises(TypeError):
        tomlwrite.dumps({"x": object()})


def test_default_variant_is_the_manifest_itself(tmp_path: Path) -> None:
    manifest = load_manifest(REPO / "ebbtide.toml")
    variant = write_variant(manifest, DEFAULT, tmp_path)
    assert variant.path.parent == tmp_path
    assert variant.spec.functions == manifest.spec.functions
    assert variant.spec.streams == manifest.spec.streams and variant.spec.kv == manifest.spec.kv
    assert variant.build_dir == manifest.build_dir  # paths made absolute: the build is found from anywhere
    for name in manifest.spec.modules:
        assert variant.resolve(variant.spec.modules[name].source) == manifest.resolve(manifest.spec.modules[name].source)


def test_variant_settings_apply_to_every_function_and_merge_scale(tmp_path: Path) -> None:
    manifest = load_manifest(REPO / "ebbtide.toml")
    variant = write_variant(manifest, Variant("t", "per-function", {"batch": 64, "scale": {"max": 7}}), tmp_path)
    for name, fn in variant.spec.functions.items():
        original = manifest.spec.functions[name]
        assert fn.batch == 64 and fn.scale.max == 7
        assert fn.scale.target_backlog == original.scale.target_backlog  # untouched keys kept
        assert msgspec.structs.replace(fn, batch=original.batch, scale=original.scale) == original


def test_the_known_fastest_is_a_candidate_and_so_is_the_default() -> None:
    assert candidate(FASTEST_KNOWN) in CANDIDATES and DEFAULT in CANDIDATES
    assert len({v.name for v in CANDIDATES}) == len(CANDIDATES)
    with pytest.raises(ValueError, match="known: default"):
        candidate("turbo")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"orders": 0}, "--orders"),
        ({"repeats": -1}, "--repeats"),
        ({"sustained_s": 0.0}, "--sustained-s"),
        ({"rates": ["fast"]}, "rate"),
        ({"sustained_target": "faststream"}, "sustained target"),
        ({"candidates": ["turbo"]}, "turbo"),
    ],
)
def test_bench_options_refuse_what_cannot_be_measured(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchOptions(**options)


def test_bench_options_defaults_are_valid() -> None:
    assert BenchOptions().rates == [] and BenchOptions(rates=["50%", "7000"]).rates == ["50%", "7000"]
