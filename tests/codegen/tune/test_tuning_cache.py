"""cache.py: key parts, config JSON, the file's atomic writes and recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.codegen.backend import Config
from lowbit.codegen.tune import cache as cache_mod
from lowbit.codegen.tune.cache import TuningCache


def test_key_parts_bucket_m_to_power_of_two() -> None:
    def k(m: int) -> str:
        return cache_mod.digest(cache_mod.key_parts("ir", "tvm", {"M": m, "N": 64}, "cpu", toolchain={}))

    assert k(3) == k(4) and k(5) == k(8) and k(4) != k(5) and k(1) != k(2)
    assert cache_mod.problem_key({"N": 64, "M": 3}) == {"M": 4, "N": 64}


def test_config_json_round_trip_keeps_tuples_hashable() -> None:
    cfg = Config.make({"B": 64, "tile": (16, 32), "mode": "pre"}, {"num_warps": 4, "flag": True})
    back = cache_mod.config_from_json(json.loads(json.dumps(cache_mod.config_to_json(cfg))))
    assert back == cfg and hash(back) == hash(cfg)


def test_cache_keeps_other_keys_and_leaves_no_temp_files(tmp_path: Path) -> None:
    c = TuningCache(tmp_path / "sub" / "tuning.json")
    c.put("a", {"best": None})
    c.put("b", {"best": None})
    c.remove("a")
    assert set(c.load()) == {"b"} and sorted(p.name for p in c.path.parent.iterdir()) == ["tuning.json"]


@pytest.mark.parametrize("text", ["{ not json", "[1, 2]", '{"format": 1}', ""])
def test_corrupt_file_loads_empty_with_warning_and_is_overwritten(tmp_path: Path, text: str) -> None:
    c = TuningCache(tmp_path / "tuning.json")
    c.path.write_text(text)
    with pytest.warns(UserWarning, match="corrupt"):
        assert c.load() == {}
    with pytest.warns(UserWarning):
        c.put("k", {"best": None})
    assert set(json.loads(c.path.read_text())["entries"]) == {"k"}


def test_default_path_follows_lowbit_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    assert TuningCache().path == tmp_path / "tuning.json"
    monkeypatch.delenv("LOWBIT_CACHE_DIR")
    assert TuningCache().path == Path("~/.cache/lowbit/tuning.json").expanduser()


def test_toolchain_versions_name_lowbit_and_numpy() -> None:
    v = cache_mod.toolchain_versions()
    assert {"lowbit", "numpy"} <= set(v) and all(isinstance(x, str) for x in v.values())
