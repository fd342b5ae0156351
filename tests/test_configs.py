"""Config files in the engines' format: names, reading, writing, and the runtime lookup."""

import json
from pathlib import Path

import pytest

from moekernel import configs
from moekernel.heuristics import HOPPER_SMEM_BYTES, default_config, down_split_k, smem_upper_bound
from moekernel.launch_params import ALL_PARAMS, EXTENDED_PARAMS, PARAMS

DATA = Path(__file__).parent.parent / "benchmarks" / "vllm-h100-configs"
H100 = "NVIDIA_H100_80GB_HBM3"


@pytest.mark.parametrize("args,name", [
    ((8, 7168, None, None, H100), "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"),
    ((8, 7168, "fp8_w8a8", None, H100), "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8.json"),
    ((256, 256, "fp8_w8a8", [128, 128], "NVIDIA_H200"),
     "E=256,N=256,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json"),
    ((64, 1408, "int8_w8a16", None, "X"), "E=64,N=1408,device_name=X,dtype=int8_w8a16.json"),
    ((8, 7168, "bf16", None, H100), "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"),
])
def test_file_names_match_the_engines(args, name):
    assert configs.config_file_name(*args) == name


@pytest.mark.parametrize("raw,name", [("NVIDIA H200", "NVIDIA_H200"), ("NVIDIA H200 NVL", "NVIDIA_H200"),
                                      ("NVIDIA GH200 480GB", "NVIDIA_GH200_480GB"),
                                      ("NVIDIA H100 80GB HBM3", "NVIDIA_H100_80GB_HBM3")])
def test_engine_device_names(raw, name):
    assert configs.engine_device_name(raw) == name


def test_down_twin_name():
    assert configs.config_file_name(8, 7168, None, None, H100, gemm="down").endswith("HBM3_down.json")


def test_cpu_device_name_cannot_pass_for_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert configs.device_name().startswith("cpu-interpreter")


def test_reads_vllm_file_unchanged_and_picks_nearest_batch():
    loaded = configs.load_configs(8, 7168, device_name=H100, folders=[DATA])
    assert sorted(loaded)[:3] == [1, 2, 4] and len(loaded) == 18
    assert loaded[1024] == {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 16,
                            "num_warps": 8, "num_stages": 4}
    assert configs.nearest_batch_size(loaded, 1000) == 1024 and configs.nearest_batch_size(loaded, 20) == 16


def test_search_order_folders_then_env_then_shipped(tmp_path, monkeypatch):
    first, env = tmp_path / "first", tmp_path / "env"
    name = configs.config_file_name(4, 64, device_name="D")
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    configs.write_config_file(env / name, {1: cfg})
    configs.write_config_file(first / name, {1: dict(cfg, BLOCK_SIZE_M=32)})
    monkeypatch.setenv(configs.ENV_FOLDER, str(env))
    assert configs.load_configs(4, 64, device_name="D", folders=[first])[1]["BLOCK_SIZE_M"] == 32
    assert configs.load_configs(4, 64, device_name="D")[1]["BLOCK_SIZE_M"] == 16
    monkeypatch.delenv(configs.ENV_FOLDER)
    assert configs.load_configs(4, 64, device_name="D") is None


def test_get_config_uses_tuned_file_else_default(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "_current_device_name", lambda: "D")
    monkeypatch.setenv(configs.ENV_FOLDER, str(tmp_path))
    assert configs.get_config(64, 4, 64, 128, 2) == default_config(64, 4, 64, 128, 2, extended=True)
    cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    configs.write_config_file(tmp_path / configs.config_file_name(4, 64, device_name="D"), {16: cfg, 256: dict(cfg, BLOCK_SIZE_M=64)})
    configs._cached_configs.cache_clear()
    assert configs.get_config(100, 4, 64, 128, 2)["BLOCK_SIZE_M"] == 32
    assert configs.get_config(200, 4, 64, 128, 2)["BLOCK_SIZE_M"] == 64


def test_down_twin_is_paired_on_load(tmp_path):
    cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    configs.write_config_file(tmp_path / configs.config_file_name(4, 64, device_name="D"), {8: cfg})
    configs.write_config_file(tmp_path / configs.config_file_name(4, 64, device_name="D", gemm="down"),
                              {8: dict(cfg, BLOCK_SIZE_N=128)})
    loaded = configs.load_configs(4, 64, device_name="D", folders=[tmp_path])
    assert loaded[8]["up"]["BLOCK_SIZE_N"] == 64 and loaded[8]["down"]["BLOCK_SIZE_N"] == 128


def test_written_file_is_engine_format_and_byte_identical(tmp_path):
    cfg = {p: v for p, v in zip(reversed(PARAMS), (3, 4, 1, 64, 32, 16))}  # keys in the wrong order on purpose
    a = configs.write_config_file(tmp_path / "a.json", {64: cfg, 2: cfg}, triton_version="3.6.0")
    b = configs.write_config_file(tmp_path / "b.json", {2: cfg, 64: cfg}, triton_version="3.6.0")
    assert a.read_bytes() == b.read_bytes()
    data = json.loads(a.read_text())
    assert list(data) == ["triton_version", "2", "64"]
    assert list(data["2"]) == list(PARAMS)
    assert a.read_text().startswith('{\n    "triton_version": "3.6.0",\n    "2": {\n        "BLOCK_SIZE_M": 16,')


def test_bad_file_is_named(tmp_path):
    path = tmp_path / configs.config_file_name(4, 64, device_name="D")
    path.write_text('{"1": {"BLOCK_SIZE_M": 16}}')
    with pytest.raises(ValueError, match="lacks BLOCK_SIZE_N"):
        configs.load_configs(4, 64, device_name="D", folders=[tmp_path])


@pytest.mark.parametrize("M", [1, 16, 64, 256, 1024, 4096])
@pytest.mark.parametrize("dtype,block", [(None, None), ("fp8_w8a8", None), ("fp8_w8a8", (128, 128)), ("int8_w8a16", None)])
def test_default_config_fits_hopper_and_block_quant(M, dtype, block):
    cfg = default_config(M, 8, 7168, 4096, 2, dtype, block)
    one = dtype in ("fp8_w8a8", "int8_w8a8")
    assert smem_upper_bound(cfg, 1 if one else 2, 1 if dtype else 2) <= HOPPER_SMEM_BYTES
    if block:
        assert block[1] % cfg["BLOCK_SIZE_K"] == 0


# ---- moekernel's own files (parameters beyond the engines' six) --------------------------------------------------

CFG = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=4)


def test_extended_file_round_trip_holds_every_parameter_of_both_gemms(tmp_path):
    name = configs.extended_config_file_name(8, 7168, device_name="NVIDIA_H200")
    assert name == "E=8,N=7168,device_name=NVIDIA_H200.moekernel.json"
    assert not configs.is_engine_file_name(name)
    assert configs.is_engine_file_name(configs.config_file_name(8, 7168, device_name="NVIDIA_H200"))
    # One dict for both GEMMs: SPLIT_K and PERSISTENT are the down GEMM's, TMA both's.
    table = {1: dict(CFG, SPLIT_K=2, TMA=1, PERSISTENT=1),
             2: {"up": dict(CFG, TMA=2), "down": dict(CFG, BLOCK_SIZE_N=64, SPLIT_K=4)},
             64: dict(CFG, BLOCK_SIZE_M=64)}
    a = configs.write_extended_config_file(tmp_path / name, table, triton_version="3.6.0")
    b = configs.write_extended_config_file(tmp_path / "b.json", dict(reversed(table.items())), triton_version="3.6.0")
    assert a.read_bytes() == b.read_bytes()
    data = json.loads(a.read_text())
    assert list(data) == ["format", "version", "triton_version", "configs"] and data["version"] == 1
    assert list(data["configs"]["1"]["down"]) == list(ALL_PARAMS)
    loaded = configs.load_configs(8, 7168, device_name="NVIDIA_H200", folders=[tmp_path])
    assert loaded[1] == {"up": dict(CFG, SPLIT_K=1, TMA=1, PERSISTENT=0, HALF_TAIL=0),
                         "down": dict(CFG, SPLIT_K=2, TMA=1, PERSISTENT=1, HALF_TAIL=0)}
    assert loaded[2] == {"up": dict(CFG, SPLIT_K=1, TMA=2, PERSISTENT=0, HALF_TAIL=0),
                         "down": dict(CFG, BLOCK_SIZE_N=64, SPLIT_K=4, TMA=0, PERSISTENT=0, HALF_TAIL=0)}
    assert loaded[64]["up"] == loaded[64]["down"] == dict(CFG, BLOCK_SIZE_M=64, **EXTENDED_PARAMS)
    # A file written before an extended parameter existed reads as its default.
    for param in EXTENDED_PARAMS:
        del data["configs"]["1"]["down"][param]
    a.write_text(json.dumps(data))
    old = configs.load_configs(8, 7168, device_name="NVIDIA_H200", folders=[tmp_path])[1]["down"]
    assert {p: old[p] for p in EXTENDED_PARAMS} == EXTENDED_PARAMS


def test_lookup_reads_our_own_file_before_the_engine_file(tmp_path, monkeypatch):
    own = configs.extended_config_file_name(4, 64, device_name="D")
    configs.write_config_file(tmp_path / configs.config_file_name(4, 64, device_name="D"), {1: CFG})
    configs.write_extended_config_file(tmp_path / own, {1: dict(CFG, SPLIT_K=2)})
    assert configs.load_configs(4, 64, device_name="D", folders=[tmp_path])[1]["down"]["SPLIT_K"] == 2
    assert configs.load_configs(4, 64, device_name="D", folders=[tmp_path], extended=False)[1] == CFG
    # Folder order still comes first: an engine file in an earlier folder wins over our file in a later one.
    first = tmp_path / "first"
    configs.write_config_file(first / configs.config_file_name(4, 64, device_name="D"), {1: dict(CFG, BLOCK_SIZE_M=32)})
    monkeypatch.setenv(configs.ENV_FOLDER, str(tmp_path))
    assert configs.load_configs(4, 64, device_name="D", folders=[first])[1]["BLOCK_SIZE_M"] == 32
    # The runtime lookup (what fused_experts uses without a config).
    monkeypatch.setattr(configs, "_current_device_name", lambda: "D")
    configs._cached_configs.cache_clear()
    assert configs.get_config(1, 4, 64, 128, 2)["down"]["SPLIT_K"] == 2
    configs._cached_configs.cache_clear()


@pytest.mark.parametrize("text,match", [
    ('{"1": {}}', "not a moekernel config file"),
    ('{"format": "moekernel-configs", "version": 2, "configs": {}}', "version 2"),
    ('{"format": "moekernel-configs", "version": 1, "configs": {"1": {"up": {}}}}', "exactly 'up' and 'down'"),
    ('{"format": "moekernel-configs", "version": 1, "configs": {"1": {"up": {}, "down": {}}}}',
     "up lacks BLOCK_SIZE_M"),
])
def test_bad_extended_file_is_named(tmp_path, text, match):
    (tmp_path / configs.extended_config_file_name(4, 64, device_name="D")).write_text(text)
    with pytest.raises(ValueError, match=match):
        configs.load_configs(4, 64, device_name="D", folders=[tmp_path])


def test_engine_files_hold_exactly_the_six_integer_parameters(tmp_path):
    path = configs.write_config_file(tmp_path / "e.json", {1: dict(CFG, SPLIT_K=1), 8: CFG}, triton_version="3.6.0")
    data = json.loads(path.read_text())
    for m in ("1", "8"):
        assert list(data[m]) == list(PARAMS) and all(type(v) is int for v in data[m].values())
    with pytest.raises(ValueError, match="SPLIT_K.*write_extended_config_file"):
        configs.format_config_file({1: dict(CFG, SPLIT_K=2)})


MIXTRAL_TP2 = (8, 7168, 4096, 2)


def test_default_splits_the_down_gemm_only_where_its_grid_is_small():
    six = default_config(1, *MIXTRAL_TP2)
    extended = default_config(1, *MIXTRAL_TP2, extended=True)
    # 2 experts x 4096 / 128 columns = 64 programs for 132 SMs: two splits of 28 K steps each.
    assert extended == {"up": dict(six, TMA=1), "down": dict(six, SPLIT_K=2, TMA=1)}
    assert down_split_k(1, *MIXTRAL_TP2, six) == 2
    # A split shorter than MIN_SPLIT_K_STEPS K steps does not pay: N=256 is two steps of 128.
    assert down_split_k(1, 8, 256, 4096, 2, six) == 1


@pytest.mark.parametrize("shape", [MIXTRAL_TP2, (8, 1792, 4096, 2), (128, 768, 2048, 8), (16, 8192, 5120, 1),
                                   (256, 256, 7168, 8)])
@pytest.mark.parametrize("dtype,block", [(None, None), ("fp8_w8a8", None), ("fp8_w8a8", (128, 128))])
def test_extended_default_differs_from_the_six_parameter_default_only_by_split_k_and_tma(shape, dtype, block):
    for M in configs.STANDARD_BATCH_SIZES:
        six = default_config(M, *shape, dtype, block)
        assert set(six) == set(PARAMS)
        extended = default_config(M, *shape, dtype, block, extended=True)
        up, down = (extended["up"], extended["down"]) if "up" in extended else (extended, extended)
        assert up == dict(six, TMA=up["TMA"]) and {k: v for k, v in down.items() if k != "SPLIT_K"} == up
        assert shape[1] // down.get("SPLIT_K", 1) >= six["BLOCK_SIZE_K"]
        # Activations by TMA only for 16-bit dtypes, wide experts and many tokens per expert (default_tma).
        assert up["TMA"] == (2 if dtype is None and shape[1] >= 2048 and M * shape[3] / shape[0] >= 256 else 1)


def test_default_tma_keeps_to_rows_a_descriptor_can_hold():
    from moekernel.heuristics import default_tma

    assert default_tma(4096, 8, 7168, 4096, 2) == 2
    assert default_tma(4096, 8, 7168, 4100, 2) == 0  # w1 and x rows of 8200 bytes
    assert default_tma(1, 8, 40, 80, 2, "int8_w8a16") == 0  # w2 rows of 40 bytes
    assert default_tma(1, 8, 48, 80, 2, "int8_w8a16") == 1
