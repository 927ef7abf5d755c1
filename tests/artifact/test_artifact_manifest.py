"""manifest.json: round trip, strict schema (each deviation named), future versions refused, safe paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.artifact.fingerprint import fingerprint
from lowbit.artifact.manifest import (
    FORMAT_VERSION,
    ArtifactError,
    FileEntry,
    Manifest,
    ManifestError,
    check_relpath,
)

SHA = "ab" * 32


def valid() -> dict:
    return Manifest.create({"w.safetensors": FileEntry(SHA, 10)}, {"model": "m"}).to_json()


def test_round_trip_and_contents():
    m = Manifest.create({"b/x.bin": FileEntry(SHA, 3), "a.json": FileEntry("0" * 64, 0)}, {"model": "m", "n": 1})
    again = Manifest.loads(m.dumps())
    assert again == m and list(again.files) == ["a.json", "b/x.bin"]
    assert m.format_version == FORMAT_VERSION and m.meta["model"] == "m"
    assert set(m.versions) == {"lowbit", "numpy", "torch", "triton", "tvm"} and m.versions["numpy"]
    assert m.device == fingerprint(cuda=True)
    with pytest.raises(TypeError):
        m.files["c"] = FileEntry(SHA, 1)  # type: ignore[index]


def test_fingerprint_fields():
    f = fingerprint()
    assert set(f) == {"os", "machine", "cpu", "isa", "cores", "cuda"}
    assert isinstance(f["cpu"], str) and f["cpu"] and f["cores"] >= 1
    assert all(isinstance(x, str) for x in f["isa"]) and json.loads(json.dumps(f)) == f


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("files"), r"missing key\(s\) \['files'\]"),
        (lambda d: d.pop("format_version"), "missing key 'format_version'"),
        (lambda d: d.update(extra=1), r"unexpected key\(s\) \['extra'\]"),
        (lambda d: d.update(format_version="1"), "format_version='1' is a str, expected int"),
        (lambda d: d.update(format_version=True), "format_version=True is a bool, expected int"),
        (lambda d: d.update(format_version=0), "format_version 0 is not a valid version"),
        (lambda d: d.update(created="yesterday"), "created='yesterday' is not an ISO 8601 time"),
        (lambda d: d["versions"].pop("tvm"), "versions has keys"),
        (lambda d: d["versions"].update(tvm=27), "versions.tvm=27 must be a version string or null"),
        (lambda d: d["device"].update(cores="2"), "device.cores='2' is a str, expected int"),
        (lambda d: d["device"].update(isa=[1]), "device.isa=.* must be a list of strings"),
        (lambda d: d["device"].update(cuda={"name": "x"}), "device.cuda=.* must be null or"),
        (lambda d: d.update(meta=[]), "meta=.* is a list, expected dict"),
        (
            lambda d: d["files"].update({"x": {"sha256": "AB" * 32, "bytes": 1}}),
            "sha256='ABAB.* is not 64 lowercase hex",
        ),
        (lambda d: d["files"].update({"x": {"sha256": "ab" * 31, "bytes": 1}}), "is not 64 lowercase hex"),
        (lambda d: d["files"].update({"x": {"sha256": SHA, "bytes": -1}}), "bytes=-1 is not a non-negative int"),
        (lambda d: d["files"].update({"x": {"sha256": SHA}}), r"files\['x'\]=.* must be \{sha256, bytes\}"),
        (lambda d: d["files"].update({"../x": {"sha256": SHA, "bytes": 1}}), "'../x' has an empty, '.' or '..' part"),
        (lambda d: d["files"].update({"/etc/passwd": {"sha256": SHA, "bytes": 1}}), "must be relative"),
        (lambda d: d["files"].update({"a/../../x": {"sha256": SHA, "bytes": 1}}), "'..' part"),
        (lambda d: d["files"].update({"manifest.json": {"sha256": SHA, "bytes": 1}}), "reserved for the manifest"),
    ],
)
def test_strict_schema_names_the_problem(mutate, message):
    d = valid()
    mutate(d)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(d)


def test_future_format_version_is_refused_with_the_fix():
    d = valid()
    d["format_version"] = FORMAT_VERSION + 1
    d["versions"]["lowbit"] = "9.0.0"
    d["new_field"] = {}  # a future format may have keys this one does not know: the version is checked first
    with pytest.raises(
        ManifestError, match=r"newer than this lowbit .* upgrade lowbit to 9.0.0 or later, or re-compile"
    ):
        Manifest.from_json(d)


def test_not_json():
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.loads('{"format_version": 1,')
    with pytest.raises(ManifestError, match="JSON list, not an object"):
        Manifest.loads("[]")


@pytest.mark.parametrize("rel", ["a", "a/b.c", "weights/model-00001.safetensors", "kernels/ab12.so", "..a", "a..b"])
def test_safe_paths_accepted(rel):
    assert check_relpath(rel) == rel


@pytest.mark.parametrize(
    "rel", ["", "/a", "a/", "a//b", "./a", "a/./b", "..", "../a", "a/..", "a\\b", "C:x", "a\x00b", "a\nb"]
)
def test_unsafe_paths_refused(rel):
    with pytest.raises(ArtifactError, match="artifact path"):
        check_relpath(rel)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\\", ":", "\x00"]), max_size=10).map("".join))
def test_accepted_paths_stay_inside(rel):
    """The law: whatever check_relpath accepts names a file strictly inside the artifact directory."""
    root = Path("/artifact/root")
    try:
        check_relpath(rel)
    except ArtifactError:
        return
    resolved = Path("/artifact/root", rel).resolve()
    assert resolved != root and resolved.is_relative_to(root) and ".." not in rel.split("/")
