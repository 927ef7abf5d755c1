"""verify_artifact / open_artifact: each corruption is an error naming the file and the fix; compatibility
differences are warnings; verify never crashes on a damaged artifact."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.artifact import ArtifactError, ArtifactWarning, open_artifact, verify_artifact
from lowbit.artifact.manifest import FORMAT_VERSION
from lowbit.artifact.writer import hash_file

WEIGHTS = "weights/model.safetensors"
FIXES = ("re-run lowbit compile", "restore the file", "remove it", "upgrade lowbit")


def only_error(path, mode="full"):
    report = verify_artifact(path, mode)
    assert not report.ok and len(report.errors) == 1, report.message()
    error = report.errors[0]
    assert any(fix in error for fix in FIXES), f"no fix named in: {error}"
    with pytest.raises(ArtifactError) as e:
        open_artifact(path, mode)
    assert error in str(e.value) and "refusing to use it" in str(e.value)
    return error


def edit_manifest(path, edit):
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_intact_artifact_verifies(artifact):
    for mode in ("full", "quick", "none"):
        report = verify_artifact(artifact, mode)
        assert report.ok and report.errors == () and report.warnings == (), report.message()
    assert "OK (full check)" in verify_artifact(artifact).message()


def test_flipped_byte_in_weights(artifact):
    p = artifact / WEIGHTS
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01  # in the tensor data: the header still parses, only the hash can tell
    p.write_bytes(bytes(data))
    error = only_error(artifact)
    assert error.startswith(WEIGHTS) and "modified after compile" in error
    assert verify_artifact(artifact, "quick").ok  # quick skips hashes (documented)


def test_truncated_file(artifact):
    p = artifact / WEIGHTS
    size = p.stat().st_size
    p.write_bytes(p.read_bytes()[:100])
    assert only_error(artifact, "quick") == (
        f"{WEIGHTS}: truncated: 100 of {size} bytes; restore the file from the original artifact or re-run "
        "lowbit compile to rebuild the artifact"
    )


def test_appended_bytes(artifact):
    with open(artifact / "model.yaml", "ab") as f:
        f.write(b"extra: 1\n")
    assert "model.yaml: " in only_error(artifact) and "changed after compile" in only_error(artifact)


def test_deleted_file(artifact):
    (artifact / "tuning/records.bin").unlink()
    assert only_error(artifact).startswith("tuning/records.bin: missing (8 bytes expected)")


def test_unexpected_files(artifact):
    (artifact / "weights" / "extra.safetensors").write_bytes(b"x")
    error = only_error(artifact)
    assert error.startswith("weights/extra.safetensors: unexpected file (not in manifest.json)")
    (artifact / "weights" / "extra.safetensors").unlink()
    (artifact / ".DS_Store").write_bytes(b"junk")
    (artifact / "weights" / "._model.safetensors").write_bytes(b"junk")
    report = verify_artifact(artifact)
    assert report.ok and len(report.warnings) == 2 and "OS metadata file" in report.warnings[0]


def test_symlinks_are_refused(artifact, tmp_path):
    outside = tmp_path / "outside.yaml"
    shutil.copy(artifact / "model.yaml", outside)
    (artifact / "model.yaml").unlink()
    (artifact / "model.yaml").symlink_to(outside)  # same bytes, same hash: still refused
    assert "symlink" in only_error(artifact)
    (artifact / "model.yaml").unlink()
    shutil.copy(outside, artifact / "model.yaml")
    (artifact / "link").symlink_to(outside)
    assert only_error(artifact).startswith("link: unexpected symlink")


def test_file_replaced_by_directory(artifact):
    (artifact / "report.json").unlink()
    (artifact / "report.json").mkdir()
    assert "report.json: is not a regular file" in only_error(artifact)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_text('{"format_version": 1, "files": '), "manifest.json is not valid JSON"),
        (lambda p: p.write_bytes(b""), "manifest.json is not valid JSON"),
        (lambda p: p.write_bytes(bytes(range(256))), "manifest.json is not valid JSON"),
        (lambda p: p.unlink(), "manifest.json: missing (not a lowbit artifact"),
    ],
)
def test_corrupt_or_missing_manifest(artifact, damage, message):
    damage(artifact / "manifest.json")
    assert message in only_error(artifact)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("device"), r"missing key(s) ['device']"),
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "is newer than this lowbit"),
        (lambda m: m["files"]["model.yaml"].update(sha256="xyz"), "sha256='xyz' is not 64 lowercase hex digits"),
        (lambda m: m["files"]["model.yaml"].update(bytes="12"), "bytes='12' is not a non-negative int"),
        (lambda m: m["files"].update({"../x": m["files"]["model.yaml"]}), "'../x' has an empty, '.' or '..' part"),
    ],
)
def test_manifest_schema_errors(artifact, edit, message):
    edit_manifest(artifact, edit)
    error = only_error(artifact)
    assert error.startswith("manifest.json") and message in error


def test_future_format_says_what_to_do(artifact):
    edit_manifest(artifact, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    error = only_error(artifact)
    assert "upgrade lowbit" in error and "re-compile with lowbit" in error


def test_path_traversal_never_reads_outside(artifact, tmp_path):
    """A manifest entry pointing outside (with the right hash of an outside file) is refused by the schema."""
    (tmp_path / "x").write_text("outside")
    entry = hash_file(tmp_path / "x")
    edit_manifest(artifact, lambda m: m["files"].update({"../x": {"sha256": entry.sha256, "bytes": entry.bytes}}))
    assert "'..' part" in only_error(artifact)


def test_garbage_safetensors_header_with_consistent_manifest(artifact):
    """Someone rewrote the weights file and its manifest entry: the hashes agree, the header check refuses it."""
    p = artifact / WEIGHTS
    data = bytearray(p.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + n] = b"#" * n  # garbage header of the same length
    p.write_bytes(bytes(data))
    entry = hash_file(p)
    edit_manifest(artifact, lambda m: m["files"][WEIGHTS].update(sha256=entry.sha256, bytes=entry.bytes))
    error = only_error(artifact)
    assert error.startswith(f"{WEIGHTS}: safetensors header is unreadable") and "header is not JSON" in error


def test_safetensors_shape_lie_with_consistent_manifest(artifact):
    p = artifact / WEIGHTS
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["norm.weight"]["shape"] = [9]  # 9 floats in 8 floats' bytes
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(text) == n
    p.write_bytes(data[:8] + text + data[8 + n :])
    entry = hash_file(p)
    edit_manifest(artifact, lambda m: m["files"][WEIGHTS].update(sha256=entry.sha256, bytes=entry.bytes))
    assert "tensor 'norm.weight'" in only_error(artifact)


def test_corrupt_json_with_consistent_manifest(artifact):
    (artifact / "report.json").write_text("{ not json")
    entry = hash_file(artifact / "report.json")
    edit_manifest(artifact, lambda m: m["files"]["report.json"].update(sha256=entry.sha256, bytes=entry.bytes))
    assert only_error(artifact).startswith("report.json: not valid JSON")


def test_missing_directory_and_interrupted_compile(tmp_path):
    assert "does not exist; re-run lowbit compile" in only_error(tmp_path / "nothing")
    (tmp_path / "half.partial").mkdir()
    assert "found" in only_error(tmp_path / "half") and "interrupted compile" in only_error(tmp_path / "half")


def test_all_problems_are_reported_at_once(artifact):
    (artifact / "tuning/records.bin").unlink()
    (artifact / "model.yaml").write_text("changed: 1\n")
    (artifact / "new.txt").write_text("x")
    errors = verify_artifact(artifact).errors
    assert len(errors) == 3 and {e.split(":")[0] for e in errors} == {"tuning/records.bin", "model.yaml", "new.txt"}


def test_other_versions_and_devices_are_warnings(artifact):
    def elsewhere(m):
        m["versions"]["tvm"] = "0.1.0"
        m["device"]["cpu"] = "Some Other CPU"
        m["device"]["isa"] = ["avx512f"]

    edit_manifest(artifact, elsewhere)
    report = verify_artifact(artifact)
    assert report.ok, report.message()
    text = "\n".join(report.warnings)
    assert "compiled with tvm 0.1.0" in text and len(report.warnings) == 2
    assert "compiled on another device" in text and "Some Other CPU" in text and "weights are portable" in text
    with pytest.warns(ArtifactWarning) as caught:
        open_artifact(artifact)
    assert [str(w.message) for w in caught] == list(report.warnings)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_or_truncation_is_caught_without_crashing(artifact, tmp_path, data):
    """Fuzz: damage one file (one byte changed, or cut short); verify never raises, and it reports an
    error unless the damage was inside manifest.json fields that carry no integrity (meta, created, ...)."""
    copy = tmp_path / f"copy{data.draw(st.integers(0, 10**9))}"
    shutil.copytree(artifact, copy)
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    victim = data.draw(st.sampled_from(files))
    raw = bytearray(victim.read_bytes())
    if data.draw(st.booleans()) and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    else:
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    victim.write_bytes(bytes(raw))
    report = verify_artifact(copy)
    if victim.name != "manifest.json":
        assert not report.ok
    elif report.ok:  # a change that left the manifest valid must not have touched the file table
        original = json.loads((artifact / "manifest.json").read_text())["files"]
        assert {k: {"sha256": v.sha256, "bytes": v.bytes} for k, v in report.manifest.files.items()} == original
    shutil.rmtree(copy)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format_version": 1, "files": {}, "files": {}}', "duplicate key 'files'"),
        ('{"format_version": NaN}', "NaN is not JSON"),
        ("[" * 100000 + "]" * 100000, "RecursionError"),
    ],
)
def test_manifest_json_tricks(artifact, text, message):
    (artifact / "manifest.json").write_text(text)
    assert message in only_error(artifact)


def test_manifest_that_is_a_directory(artifact):
    (artifact / "manifest.json").unlink()
    (artifact / "manifest.json").mkdir()
    assert "manifest.json: is a symlink or not a regular file" in only_error(artifact)


def test_yaml_with_python_objects_is_refused(artifact):
    """No pickle anywhere: a YAML tag that would construct a Python object does not parse (safe_load)."""
    (artifact / "model.yaml").write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    entry = hash_file(artifact / "model.yaml")
    edit_manifest(artifact, lambda m: m["files"]["model.yaml"].update(sha256=entry.sha256, bytes=entry.bytes))
    assert only_error(artifact).startswith("model.yaml: not valid YAML")


def test_duplicate_tensor_names_in_header(artifact):
    p = artifact / WEIGHTS
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    dup = ('{"norm.weight":' + json.dumps(header["norm.weight"]) + "," + json.dumps(header)[1:]).encode()
    p.write_bytes(struct.pack("<Q", len(dup)) + dup + data[8 + n :])
    entry = hash_file(p)
    edit_manifest(artifact, lambda m: m["files"][WEIGHTS].update(sha256=entry.sha256, bytes=entry.bytes))
    assert "duplicate key 'norm.weight'" in only_error(artifact)
