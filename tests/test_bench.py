"""python -m moekernel.bench: roofline arithmetic, config-folder fallback, and a tiny run in the interpreter."""

import json

import pytest
import torch

from moekernel import bench
from moekernel.configs import write_config_file
from moekernel.shapes import KernelShape

MIXTRAL = KernelShape(8, 7168, 4096, 2, "bf16")
H100 = "NVIDIA_H100_80GB_HBM3"
TINY = KernelShape.from_key("E4-N64-K64-top2-fp16")
CFG = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1, num_warps=4, num_stages=2)


def test_roofline_memory_bound_at_batch_one():
    r = bench.roofline(MIXTRAL, 1, 2, bandwidth=4.2e12, peak=797e12)
    # two experts' w1 [2N, K] + w2 [K, N] in bf16, one token in and out
    assert r["bytes"] == 2 * 3 * 7168 * 4096 * 2 + 2 * 4096 * 2 == 352_337_920
    assert r["flops"] == 2 * 1 * 2 * 3 * 7168 * 4096 == 352_321_536
    assert r["bound"] == "memory"
    assert r["floor_us"] == pytest.approx(352_337_920 / 4.2e12 * 1e6)  # ~83.9 µs
    assert r["compute_us"] == pytest.approx(352_321_536 / 797e12 * 1e6)


def test_roofline_compute_bound_at_large_batch_and_no_floor_without_ceilings():
    r = bench.roofline(MIXTRAL, 4096, 8, bandwidth=4.2e12, peak=797e12)
    assert r["bytes"] == 8 * 3 * 7168 * 4096 * 2 + 2 * 4096 * 4096 * 2
    assert r["bound"] == "compute"
    assert r["floor_us"] == pytest.approx(2 * 4096 * 2 * 3 * 7168 * 4096 / 797e12 * 1e6)
    empty = bench.roofline(MIXTRAL, 4096, 8, bandwidth=None, peak=797e12)
    assert empty["floor_us"] is None and empty["bound"] is None and empty["bytes"] == r["bytes"]


def test_weight_bytes_count_one_byte_weights_and_their_scales():
    assert bench.weight_bytes_per_expert(MIXTRAL) == 3 * 7168 * 4096 * 2
    fp8 = KernelShape(8, 7168, 4096, 2, "fp8_w8a8")
    assert bench.weight_bytes_per_expert(fp8) == 3 * 7168 * 4096 + 2 * 4  # one float32 scale per tensor
    w8a16 = KernelShape(8, 7168, 4096, 2, "int8_w8a16")
    assert bench.weight_bytes_per_expert(w8a16) == 3 * 7168 * 4096 + 4 * (2 * 7168 + 4096)
    block = KernelShape(256, 256, 7168, 8, "fp8_w8a8", (128, 128))
    # w1 [512, 7168]: 4 x 56 blocks; w2 [7168, 256]: 56 x 2 blocks
    assert bench.weight_bytes_per_expert(block) == 3 * 256 * 7168 + 4 * (4 * 56 + 56 * 2)


def test_peak_per_dtype():
    c = bench.Ceilings(bandwidth=4.2e12, bf16_flops=797e12, fp8_flops=1466e12)
    assert [c.peak(d) for d in ("bf16", "fp16", "int8_w8a16", "fp8_w8a8", "int8_w8a8")] == [797e12] * 3 + [1466e12] * 2


def test_hit_experts_counts_distinct_routed_experts():
    assert bench.hit_experts(torch.tensor([[0, 1], [1, 3], [0, 3]]), 4) == 3
    assert bench.hit_experts(torch.tensor([[2, -1], [2, 2]]), 4) == 1  # -1: not a local expert
    assert bench.hit_experts(torch.arange(16).reshape(8, 2) % 8, 8) == 8


def test_folder_falls_back_to_another_devices_file_and_says_so(tmp_path):
    h100 = write_config_file(tmp_path / f"E=4,N=64,device_name={H100}.json", {1: CFG, 64: {**CFG, "BLOCK_SIZE_M": 64}})
    # Same E and N but another dtype, and another N: neither may be taken for the fp16 shape.
    write_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_A100,dtype=fp8_w8a8.json", {1: CFG})
    write_config_file(tmp_path / "E=4,N=128,device_name=NVIDIA_A100.json", {1: CFG})
    write_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_A100_down.json", {1: CFG})  # a split twin, not a file
    path, device, message = bench.find_config_file(tmp_path, TINY, "NVIDIA_H200")
    assert path == h100 and device == H100
    assert "NVIDIA_H200" in message and h100.name in message and "falling back" in message

    src = bench.folder_source("folder", tmp_path, TINY, "NVIDIA_H200")
    assert src.file == str(h100) and sorted(src.table) == [1, 64]
    assert src.config(TINY, 40) == ({**CFG, "BLOCK_SIZE_M": 64}, 64)  # nearest batch size, as engines pick

    exact = write_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_H200.json", {8: CFG})
    path, device, message = bench.find_config_file(tmp_path, TINY, "NVIDIA_H200")
    assert path == exact and device == "NVIDIA_H200" and "falling back" not in message


def test_folder_without_a_matching_file_gives_no_table(tmp_path):
    write_config_file(tmp_path / f"E=4,N=64,device_name={H100},dtype=fp8_w8a8.json", {1: CFG})
    src = bench.folder_source("folder", tmp_path, TINY, "NVIDIA_H200")
    assert src.table is None and "no file" in src.note


def test_table_and_summary_flag_mismatches_and_compute_speedups():
    sources = [bench.Source("default", "heuristic", "default"),
               bench.Source("engine-default", "heuristic", "engine-default")]
    base = dict(hit_experts=8, floor_us=10.0, bound="memory", error=None, skipped=None)
    rows = [
        {**base, "batch_size": 1, "source": "default", "time_us": 20.0, "fraction": 0.5, "mismatch": False},
        {**base, "batch_size": 1, "source": "engine-default", "time_us": 40.0, "fraction": 0.25, "mismatch": True},
        {**base, "batch_size": 8, "source": "default", "time_us": 12.5, "fraction": 0.8, "mismatch": False},
        {**base, "batch_size": 8, "source": "engine-default", "time_us": 12.5, "fraction": 0.8, "mismatch": False},
    ]
    s = bench.summarize(rows, sources)
    assert s["sources"]["default"]["geomean_fraction"] == pytest.approx((0.5 * 0.8) ** 0.5)
    assert s["sources"]["engine-default"]["min_fraction"] == 0.25
    assert s["sources"]["engine-default"]["mismatch_batch_sizes"] == [1]
    assert s["default_speedup"]["engine-default"]["geomean"] == pytest.approx(2 ** 0.5)
    text = bench.format_table(rows, sources)
    assert "40.0!" in text and "20.0!" not in text
    md = bench.format_table(rows, sources, markdown=True).splitlines()
    assert md[0].startswith("| M |") and set(md[1]) <= set("|-:") and len(md) == 4


def test_key_excludes_explicit_shape_options():
    with pytest.raises(SystemExit):
        bench.main(["--key", "E4-N64-K64-top2-fp16", "--E", "8"])


def test_main_on_a_tiny_shape_writes_the_json(tmp_path, capsys):
    folder = tmp_path / "configs"
    write_config_file(folder / f"E=4,N=64,device_name={H100}.json", {1: CFG, 4: {**CFG, "BLOCK_SIZE_N": 64}})
    out = tmp_path / "bench.json"
    assert bench.main(["--key", "E4-N64-K64-top2-fp16", "--batch-sizes", "1,4", "--skip-torch", "--iters", "2",
                       "--configs", str(folder), "--device-name", "NVIDIA_H200", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    interpreter = not torch.cuda.is_available()  # on a GPU the same run is real, with measured ceilings
    assert ("Triton's CPU interpreter" in printed and "falling back" in printed) == interpreter

    report = json.loads(out.read_text())
    for key in ("key", "device", "torch_version", "triton_version", "date", "ceilings", "sources", "rows",
                "summary", "batch_sizes"):
        assert key in report, key
    assert report["key"] == "E4-N64-K64-top2-fp16" and report["interpreter"] is interpreter
    assert (report["ceilings"]["bandwidth_TBps"] is None) == interpreter
    names = [s["name"] for s in report["sources"]]
    assert names == ["default", "engine-default", f"folder:{folder}"]
    rows = report["rows"]
    assert len(rows) == 6 and {r["batch_size"] for r in rows} == {1, 4}
    for r in rows:
        assert r["error"] is None and r["time_us"] > 0 and (r["fraction"] is None) == interpreter, r
        assert r["mismatch"] is False and r["bytes"] > 0 and r["flops"] == 2 * r["batch_size"] * 2 * 3 * 64 * 64
    folder_rows = {r["batch_size"]: r for r in rows if r["source"].startswith("folder:")}
    assert folder_rows[4]["config_batch_size"] == 4 and folder_rows[4]["config"]["BLOCK_SIZE_N"] == 64
    default_rows = [r for r in rows if r["source"] == "default"]
    assert all(r["ref_error"] < 2e-2 for r in default_rows)
