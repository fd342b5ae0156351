"""python -m moekernel.bench: config-folder fallback, the report tables, and a tiny run in the interpreter."""

import json

import pytest
import torch

from moekernel.bench import cli, table
from moekernel.bench import sources as bench_sources
from moekernel.configs import write_config_file, write_extended_config_file
from moekernel.launch_params import PARAMS
from moekernel.shapes import KernelShape

H100 = "NVIDIA_H100_80GB_HBM3"
TINY = KernelShape.from_key("E4-N64-K64-top2-fp16")
CFG = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1, num_warps=4, num_stages=2)


def test_folder_falls_back_to_another_devices_file_and_says_so(tmp_path):
    h100 = write_config_file(tmp_path / f"E=4,N=64,device_name={H100}.json", {1: CFG, 64: {**CFG, "BLOCK_SIZE_M": 64}})
    # Same E and N but another dtype, and another N: neither may be taken for the fp16 shape.
    write_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_A100,dtype=fp8_w8a8.json", {1: CFG})
    write_config_file(tmp_path / "E=4,N=128,device_name=NVIDIA_A100.json", {1: CFG})
    write_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_A100_down.json", {1: CFG})  # a split twin, not a file
    write_extended_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_A100.moekernel.json", {1: CFG})  # ours, neither
    path, device, message = bench_sources.find_config_file(tmp_path, TINY, "NVIDIA_H200")
    assert path == h100 and device == H100
    assert "NVIDIA_H200" in message and h100.name in message and "falling back" in message

    src = bench_sources.folder_source("folder", tmp_path, TINY, "NVIDIA_H200")
    assert src.file == str(h100) and sorted(src.table) == [1, 64]
    assert src.config(TINY, 40) == ({**CFG, "BLOCK_SIZE_M": 64}, 64)  # nearest batch size, as engines pick

    exact = write_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_H200.json", {8: CFG})
    path, device, message = bench_sources.find_config_file(tmp_path, TINY, "NVIDIA_H200")
    assert path == exact and device == "NVIDIA_H200" and "falling back" not in message


def test_folder_without_a_matching_file_gives_no_table(tmp_path):
    write_config_file(tmp_path / f"E=4,N=64,device_name={H100},dtype=fp8_w8a8.json", {1: CFG})
    src = bench_sources.folder_source("folder", tmp_path, TINY, "NVIDIA_H200")
    assert src.table is None and "no file" in src.note


def test_a_tuned_folder_with_moekernels_own_file_is_benched_both_ways(tmp_path):
    # The engine file (what an engine runs) and moekernel's own file (what moekernel's runtime runs) side by side.
    write_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_H200.json", {1: CFG})
    write_extended_config_file(tmp_path / "E=4,N=64,device_name=NVIDIA_H200.moekernel.json",
                               {1: {"up": CFG, "down": {**CFG, "SPLIT_K": 2}}})
    args = cli.build_parser().parse_args(["--tuned", str(tmp_path), "--skip-torch"])
    found = {src.label: src for src in bench_sources.build_sources(args, TINY, "NVIDIA_H200")}
    engine, own = found[f"tuned:{tmp_path.name}"], found[f"own:{tmp_path.name}"]
    assert engine.config(TINY, 1)[0] == CFG
    assert own.config(TINY, 1)[0]["down"]["SPLIT_K"] == 2
    assert bench_sources.own_file_source(tmp_path, TINY, "NVIDIA_H100_80GB_HBM3") is None  # no own file for it


def test_table_and_summary_flag_mismatches_and_compute_speedups():
    sources = [bench_sources.Source("default", "heuristic", "default"),
               bench_sources.Source("engine-default", "heuristic", "engine-default")]
    base = dict(hit_experts=8, floor_us=10.0, bound="memory", error=None, skipped=None)
    rows = [
        {**base, "batch_size": 1, "source": "default", "time_us": 20.0, "fraction": 0.5, "mismatch": False},
        {**base, "batch_size": 1, "source": "engine-default", "time_us": 40.0, "fraction": 0.25, "mismatch": True},
        {**base, "batch_size": 8, "source": "default", "time_us": 12.5, "fraction": 0.8, "mismatch": False},
        {**base, "batch_size": 8, "source": "engine-default", "time_us": 12.5, "fraction": 0.8, "mismatch": False},
    ]
    s = table.summarize(rows, sources)
    assert s["sources"]["default"]["geomean_fraction"] == pytest.approx((0.5 * 0.8) ** 0.5)
    assert s["sources"]["engine-default"]["min_fraction"] == 0.25
    assert s["sources"]["engine-default"]["mismatch_batch_sizes"] == [1]
    assert s["default_speedup"]["engine-default"]["geomean"] == pytest.approx(2 ** 0.5)
    text = table.format_table(rows, sources)
    assert "40.0!" in text and "20.0!" not in text
    md = table.format_table(rows, sources, markdown=True).splitlines()
    assert md[0].startswith("| M |") and set(md[1]) <= set("|-:") and len(md) == 4


def test_default_may_split_k_and_default_six_keeps_the_engines_parameters():
    mixtral = KernelShape.from_key("E8-N7168-K4096-top2-bf16")
    extended, _ = bench_sources.Source("default", "heuristic", "default").config(mixtral, 1)
    six, _ = bench_sources.Source("default-six", "heuristic", "default-six").config(mixtral, 1)
    assert extended["down"]["SPLIT_K"] > 1 and set(six) == set(PARAMS)
    assert extended["up"] == dict(six, TMA=1)


def test_key_excludes_explicit_shape_options():
    with pytest.raises(SystemExit):
        cli.main(["--key", "E4-N64-K64-top2-fp16", "--E", "8"])


def test_main_on_a_tiny_shape_writes_the_json(tmp_path, capsys):
    folder = tmp_path / "configs"
    write_config_file(folder / f"E=4,N=64,device_name={H100}.json", {1: CFG, 4: {**CFG, "BLOCK_SIZE_N": 64}})
    out = tmp_path / "bench.json"
    assert cli.main(["--key", "E4-N64-K64-top2-fp16", "--batch-sizes", "1,4", "--skip-torch", "--iters", "2",
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
    assert names == ["default", "default-six", "engine-default", f"folder:{folder}"]
    rows = report["rows"]
    assert len(rows) == 8 and {r["batch_size"] for r in rows} == {1, 4}
    for r in rows:
        assert r["error"] is None and r["time_us"] > 0 and (r["fraction"] is None) == interpreter, r
        assert r["mismatch"] is False and r["bytes"] > 0 and r["flops"] == 2 * r["batch_size"] * 2 * 3 * 64 * 64
    folder_rows = {r["batch_size"]: r for r in rows if r["source"].startswith("folder:")}
    assert folder_rows[4]["config_batch_size"] == 4 and folder_rows[4]["config"]["BLOCK_SIZE_N"] == 64
    default_rows = [r for r in rows if r["source"] in ("default", "default-six")]
    assert len(default_rows) == 4 and all(r["ref_error"] < 2e-2 for r in default_rows)
