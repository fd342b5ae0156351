"""moekernel.pipeline.emit: tuner winners → engine config files (names, content, split twins, collisions)."""

from __future__ import annotations

import json
import logging

import pytest

from moekernel import configs
from moekernel.launch_params import EXTENDED_PARAMS
from moekernel.pipeline import emit

KEY = "E8-N7168-K4096-top2-bf16"


def cfg(bm, bn=64, bk=64, g=1, w=4, s=3):
    return dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=g, num_warps=w, num_stages=s)


def test_one_file_per_shape_in_engine_format(tmp_path, write_shard):
    shards = [write_shard(tmp_path / f"bs{m}.parquet", KEY, m, [(cfg(16), 9.0), (cfg(bm), 5.0)], winner=1)
              for m, bm in ((64, 64), (1, 16), (8, 32))]
    paths = emit.emit_from_shards(shards, tmp_path / "configs")
    assert [p.name for p in paths] == ["E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"]
    data = json.loads(paths[0].read_text())
    assert list(data) == ["triton_version", "1", "8", "64"]  # version first, batch sizes ascending
    assert data["triton_version"] == "3.6.0"  # the version the timings were made with, not the installed one
    assert data["8"] == cfg(32) and list(data["8"]) == list(cfg(32))
    # The engines' loader reads it back.
    loaded = configs.load_configs(8, 7168, None, None, "NVIDIA_H100_80GB_HBM3", folders=[tmp_path / "configs"])
    assert loaded == {1: cfg(16), 8: cfg(32), 64: cfg(64)}


def test_rebuild_is_byte_identical(tmp_path, write_shard):
    shards = [write_shard(tmp_path / "bs1.parquet", "E256-N256-K7168-top8-fp8_w8a8-block128x128", 1,
                          [(cfg(16, 128, 128), 3.0)])]
    first = emit.emit_from_shards(shards, tmp_path / "a")[0]
    second = emit.emit_from_shards(shards, tmp_path / "b")[0]
    assert first.name == "E=256,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json"
    assert first.read_bytes() == second.read_bytes()


def test_split_winners_go_to_the_file_and_its_down_twin(tmp_path, write_shard):
    up = write_shard(tmp_path / "up.parquet", KEY, 4, [(cfg(16, 128), 2.0)], gemm="up")
    down = write_shard(tmp_path / "down.parquet", KEY, 4, [(cfg(16, 32), 1.0)], gemm="down")
    paths = emit.emit_from_shards([up, down], tmp_path / "configs")
    assert [p.name for p in paths] == [
        "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json",
        "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3_down.json",
    ]
    loaded = configs.load_configs(8, 7168, None, None, "NVIDIA_H100_80GB_HBM3", folders=[tmp_path / "configs"])
    assert loaded == {4: {"up": cfg(16, 128), "down": cfg(16, 32)}}


def test_two_keys_on_one_file_name_stop_naming_both(tmp_path, write_shard):
    other = "E8-N7168-K2048-top2-bf16"  # same E, N, dtype: only K differs
    shards = [write_shard(tmp_path / "a.parquet", KEY, 1, [(cfg(16), 1.0)]),
              write_shard(tmp_path / "b.parquet", other, 1, [(cfg(16), 1.0)])]
    with pytest.raises(emit.EmitError) as err:
        emit.emit_from_shards(shards, tmp_path / "configs")
    assert KEY in str(err.value) and other in str(err.value)
    assert not list((tmp_path / "configs").glob("*.json"))  # nothing half-written


def test_device_names_as_engines_spell_them(tmp_path, write_shard):
    assert configs.engine_device_name("NVIDIA H200 NVL") == "NVIDIA_H200"
    assert configs.engine_device_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"
    shard = write_shard(tmp_path / "bs1.parquet", KEY, 1, [(cfg(16), 1.0)], device="cpu-interpreter",
                        backend="interpret")
    (path,) = emit.emit_from_shards([shard], tmp_path / "configs")
    assert "device_name=cpu-interpreter" in path.name


def test_batch_size_without_winner_is_left_out(tmp_path, write_shard, caplog):
    shards = [write_shard(tmp_path / "bs1.parquet", KEY, 1, [(cfg(16), 1.0)]),
              write_shard(tmp_path / "bs2.parquet", KEY, 2, [(cfg(16), None, "compile_error")], winner=-1)]
    with caplog.at_level(logging.WARNING):
        (path,) = emit.emit_from_shards(shards, tmp_path / "configs")
    assert list(json.loads(path.read_text())) == ["triton_version", "1"]
    assert "no winner at batch size 2" in caplog.text


def test_split_and_whole_winners_of_one_key_do_not_mix(tmp_path, write_shard):
    shards = [write_shard(tmp_path / "a.parquet", KEY, 1, [(cfg(16), 1.0)]),
              write_shard(tmp_path / "b.parquet", KEY, 2, [(cfg(16), 1.0)], gemm="up")]
    with pytest.raises(emit.EmitError, match="mix split"):
        emit.emit_from_shards(shards, tmp_path / "configs")


def test_a_default_kept_at_one_size_of_a_split_key_goes_to_both_files(tmp_path, write_shard):
    import pandas as pd

    from moekernel.pipeline.database import COMPARISONS_SCHEMA

    up = write_shard(tmp_path / "up.parquet", KEY, 4, [(cfg(16, 128), 2.0)], gemm="up")
    rows = [{"key": KEY, "batch_size": 4, "source": "tuned", "emitted": True, "device": "NVIDIA_H200",
             "config": json.dumps({"up": cfg(16, 128), "down": cfg(16, 32)})},
            {"key": KEY, "batch_size": 64, "source": "default", "emitted": True, "device": "NVIDIA_H200",
             "config": json.dumps(cfg(64))}]
    verified = tmp_path / "verify.parquet"
    pd.DataFrame(rows).reindex(columns=list(COMPARISONS_SCHEMA)).to_parquet(verified)
    done = emit.emit_from_verify([up], [verified], tmp_path / "configs")
    assert done["written"] == ["E=8,N=7168,device_name=NVIDIA_H200.json", "E=8,N=7168,device_name=NVIDIA_H200_down.json"]
    loaded = configs.load_configs(8, 7168, None, None, "NVIDIA_H200", folders=[tmp_path / "configs"])
    assert loaded[4] == {"up": cfg(16, 128), "down": cfg(16, 32)} and loaded[64] == {"up": cfg(64), "down": cfg(64)}


def test_a_split_k_winner_goes_to_moekernels_own_file_and_never_to_the_engine_file(tmp_path, write_shard):
    import pandas as pd

    from moekernel.launch_params import PARAMS
    from moekernel.pipeline.database import COMPARISONS_SCHEMA

    shard = write_shard(tmp_path / "bs1.parquet", KEY, 1, [(cfg(16, 128), 2.0)])
    split = {**cfg(16, 128), "SPLIT_K": 2}

    def verify_file(rows):
        path = tmp_path / f"verify{len(rows)}.parquet"
        base = {"key": KEY, "device": "NVIDIA_H200"}
        pd.DataFrame([{**base, **r} for r in rows]).reindex(columns=list(COMPARISONS_SCHEMA)).to_parquet(path)
        return path

    engine = [{"batch_size": 1, "source": "tuned", "emitted": True, "config": json.dumps(cfg(16, 128))},
              {"batch_size": 4, "source": "default", "emitted": True, "config": json.dumps(cfg(16))}]
    extended = [{"batch_size": 1, "source": "extended", "emitted": True, "config": json.dumps(split)},
                {"batch_size": 4, "source": "extended", "emitted": False,
                 "config": json.dumps({**cfg(16), "SPLIT_K": 4})}]
    out = tmp_path / "configs"
    done = emit.emit_from_verify([shard], [verify_file(engine + extended)], out)
    own = "E=8,N=7168,device_name=NVIDIA_H200.moekernel.json"
    assert done["written"] == ["E=8,N=7168,device_name=NVIDIA_H200.json", own]
    # The engine file: exactly the six integer keys per batch size, whatever moekernel's own file holds.
    engine_file = json.loads((out / "E=8,N=7168,device_name=NVIDIA_H200.json").read_text())
    assert all(list(v) == list(PARAMS) and all(type(x) is int for x in v.values())
               for k, v in engine_file.items() if k != "triton_version")
    # moekernel's runtime reads its own file first: the split where verify chose it, the engine's config elsewhere.
    loaded = configs.load_configs(8, 7168, None, None, "NVIDIA_H200", folders=[out])
    assert loaded[1]["down"] == {**EXTENDED_PARAMS, **split} and loaded[1]["up"] == {**cfg(16, 128), **EXTENDED_PARAMS}
    assert loaded[4]["down"] == {**cfg(16), **EXTENDED_PARAMS}
    # A later run where no split pays any more: the own file goes, so it cannot shadow the new engine file.
    done = emit.emit_from_verify([shard], [verify_file(engine)], out)
    assert done["removed"] == [own] and not (out / own).exists()
