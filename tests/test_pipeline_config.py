"""moekernel.pipeline.plan: config validation with defaults, model resolution, the de-duplicated job plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moekernel.pipeline import plan as pipeline
from moekernel.pipeline.plan import ConfigError, load_config, make_plan
from moekernel.shapes import KernelShape

REPO = Path(__file__).resolve().parent.parent

# A stand-in for moekernel.models.kernel_shape: model name -> (E, I, K, topk).
MODELS = {"a": (8, 1024, 512, 2), "a-instruct": (8, 1024, 512, 2), "b": (16, 512, 256, 4)}


def fake_kernel_shape(model, tp_size=1, expert_parallel=False, dtype="auto", prefix=None, trust_remote_code=False):
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    E, inter, K, topk = MODELS[model]
    if inter % tp_size:
        raise ValueError(f"{model}: I={inter} is not divisible by tp={tp_size}")
    return KernelShape(E, inter // tp_size, K, topk, "bf16" if dtype == "auto" else dtype)


def plan(cfg, cuda=True):
    return make_plan(cfg, cuda_available=cuda, kernel_shape=fake_kernel_shape, kernel_hash="h" * 16)


def error_of(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    return str(err.value)


def test_repo_config_is_valid_and_documented():
    config = load_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert config["models"][0] == {"name": "mixtral-8x7b", "prefix": None, "trust_remote_code": False}
    text = (REPO / "config.yaml").read_text()
    for key in yaml.safe_load((REPO / "schema" / "config.schema.yaml").read_text())["properties"]:
        assert f"\n{key}:" in text, f"config.yaml does not document {key}"


def test_defaults_fill_every_key():
    config = load_config({"models": ["a"]})
    assert config["tp_sizes"] == [1] and config["dtypes"] == ["auto"] and config["backend"] == "auto"
    assert config["search"] == {"strategy": "fast", "space": "vllm", "seed_from_other_keys": True}
    assert config["timing"] == {"iters": 20, "draws": 3} and config["verify"] == {"draws": 3, "max_loss": 0.02}
    assert config["gpus"] == ["auto"] and config["gpu_constraints"] == {}
    assert config["batch_sizes"][:3] == [1, 2, 4] and len(config["batch_sizes"]) == 18
    assert config["split"] is False and config["baseline_configs"] is None and config["seed"] == 0
    assert load_config({"models": ["a"], "search": {"strategy": "exhaustive"}})["search"]["space"] == "vllm"


@pytest.mark.parametrize("cfg, expected", [
    ({"models": ["a"], "backend": "gpu"}, ["'backend'", "'gpu'", "auto, cuda, interpret"]),
    ({"models": ["a"], "search": {"strategy": "slow"}}, ["'search.strategy'", "fast, exhaustive"]),
    ({"models": ["a"], "dtypes": ["fp32"]}, ["'dtypes[0]'", "bf16, fp16, fp8_w8a8, int8_w8a16, int8_w8a8"]),
    ({"models": ["a"], "tp_size": [2]}, ["'tp_size'", "tp_sizes"]),
    ({"models": ["a"], "search": {"space": {"BLOCK_M": [16]}}}, ["'search.space.BLOCK_M'", "BLOCK_SIZE_M"]),
    ({"models": ["a"], "search": {"space": "huge"}}, ["'search.space'", "vllm"]),
    ({"models": ["a"], "routing": "skewed"}, ["'routing'", "zipf:<s>"]),
    ({"models": ["a"], "tp_sizes": [0]}, ["'tp_sizes[0]'", "minimum"]),
    ({"models": [{"nam": "a"}]}, ["'models[0].nam'", "name, prefix, trust_remote_code"]),
    ({}, ["'models'"]),
])  # fmt: skip
def test_errors_name_the_key_and_what_is_allowed(cfg, expected):
    message = error_of(cfg)
    for part in expected:
        assert part in message


def test_all_errors_reported_at_once():
    message = error_of({"models": ["a"], "backend": "gpu", "seed": -1})
    assert "'backend'" in message and "'seed'" in message


def test_same_key_is_tuned_once():
    p = plan({"models": ["a", "a-instruct", "b"], "tp_sizes": [1, 2], "batch_sizes": [1, 64]})
    assert len(p.shapes) == 6  # every (model, tp) is in the shapes table...
    assert p.keys == ["E8-N1024-K512-top2-bf16", "E8-N512-K512-top2-bf16", "E16-N512-K256-top4-bf16",
                      "E16-N256-K256-top4-bf16"]  # ...but a and a-instruct share their keys
    assert len(p.shards()) == 8
    assert p.shard("NVIDIA_H200", p.keys[0], 64) == "results/timings/NVIDIA_H200/E8-N1024-K512-top2-bf16/bs64.parquet"
    assert p.jobs() == [("NVIDIA_H200", k) for k in p.keys]  # one warm tune job per (GPU model, key)
    row = p.shapes[0]
    assert (row["model"], row["tp"], row["ep"], row["dtype"], row["key"]) == ("a", 1, False, "auto", p.keys[0])


def test_settings_hold_what_timings_depend_on(tmp_path, monkeypatch):
    p = plan({"models": ["a"], "search": {"strategy": "exhaustive", "space": {"BLOCK_SIZE_M": [16, 32]}},
              "timing": {"iters": 5}, "routing": "zipf:1.2", "split": True})
    assert p.backend == "cuda" and not p.demo and p.banner() is None
    assert p.settings.as_dict() == {"strategy": "exhaustive", "space": '{"BLOCK_SIZE_M":[16,32]}', "iters": 5,
                                    "draws": 3, "routing": "zipf:1.2", "seed": 0, "split": True, "backend": "cuda"}
    assert p.kernel_hash == "h" * 16
    args = " ".join(p.settings.cli_args())
    assert "--split" in args and "--iters 5" in args and "--space {\"BLOCK_SIZE_M\":[16,32]}" in args
    # A space file is read, so editing the file changes the settings (and re-runs the tune jobs).
    monkeypatch.chdir(tmp_path)
    Path("space.json").write_text(json.dumps({"num_warps": [4, 8]}))
    assert plan({"models": ["a"], "search": {"space": "space.json"}}).settings.space == '{"num_warps":[4,8]}'
    with pytest.raises(ConfigError, match="does not exist"):
        plan({"models": ["a"], "search": {"space": "missing.json"}})


def test_adding_a_model_or_batch_size_leaves_existing_jobs_alone():
    before = plan({"models": ["a"], "batch_sizes": [1, 64]})
    after = plan({"models": ["a", "b"], "batch_sizes": [1, 64, 128]})
    assert set(before.shards()) < set(after.shards())
    assert before.settings == after.settings and before.settings.cli_args() == after.settings.cli_args()


def test_no_gpu_means_a_loud_demo_run():
    p = plan({"models": ["a"], "batch_sizes": [1, 2, 4, 8]}, cuda=False)
    assert p.demo and p.backend == "interpret"
    assert p.keys == ["E4-N64-K64-top2-fp16"] and p.batch_sizes == [1, 4, 16]
    assert p.settings.strategy == "exhaustive" and p.settings.backend == "interpret"
    assert p.requested_keys == ["E8-N1024-K512-top2-bf16"]
    assert "NO CUDA DEVICE" in p.banner() and "E8-N1024-K512-top2-bf16" in p.banner()
    # Asking for the interpreter explicitly tunes the requested shapes (and still warns).
    p = plan({"models": ["a"], "backend": "interpret"}, cuda=True)
    assert not p.demo and p.keys == ["E8-N1024-K512-top2-bf16"] and "meaningless" in p.banner()


def test_model_errors_surface_with_the_models_message():
    with pytest.raises(ConfigError, match=r"model 'zzz' \(tp_size=1, dtype=auto\): unknown model 'zzz'"):
        plan({"models": ["zzz"]})
    with pytest.raises(ConfigError, match="not divisible by tp=3"):
        plan({"models": ["a"], "tp_sizes": [3]})
    with pytest.raises(ConfigError, match="not divisible by tp=3"):
        plan({"models": ["a"], "tp_sizes": [3]}, cuda=False)  # the demo still checks the real models


def test_real_models_resolve():
    p = make_plan({"models": ["mixtral-8x7b"], "tp_sizes": [2]}, cuda_available=True, kernel_hash="x")
    assert p.keys == ["E8-N7168-K4096-top2-bf16"]


def test_keys_sharing_an_engine_file_stop_before_tuning():
    MODELS["c"] = (8, 1024, 1024, 2)  # like "a" but another hidden size: same E, N, dtype
    try:
        with pytest.raises(ConfigError) as err:
            plan({"models": ["a", "c"]})
    finally:
        del MODELS["c"]
    assert "E8-N1024-K512-top2-bf16" in str(err.value) and "E8-N1024-K1024-top2-bf16" in str(err.value)
    pipeline.check_file_collisions(["E8-N1024-K512-top2-fp8_w8a8", "E8-N1024-K512-top2-bf16"])  # other files


def test_gpu_models_are_part_of_the_plan():
    both = plan({"models": ["a"], "gpus": ["NVIDIA_H100_80GB_HBM3", "NVIDIA_H200"],
                 "gpu_constraints": {"NVIDIA_H200": "h200"}})
    assert both.gpus == ["NVIDIA_H100_80GB_HBM3", "NVIDIA_H200"]
    assert {g for g, _ in both.jobs()} == set(both.gpus) and len(both.tuned_records()) == 2  # one key, two models
    assert both.constraint("NVIDIA_H200") == "h200" and both.constraint("NVIDIA_H100_80GB_HBM3") is None
    # auto: the models this host sees (one record per model, not per GPU); none is an error that says what to do
    here = make_plan({"models": ["mixtral-8x7b"], "tp_sizes": [2]}, cuda_available=True,
                     gpu_models=["NVIDIA_H200", "NVIDIA_H200"], kernel_hash="x")
    assert here.gpus == ["NVIDIA_H200"]
    with pytest.raises(ConfigError, match=r"gpus: \[NVIDIA_H200\]"):
        make_plan({"models": ["mixtral-8x7b"], "tp_sizes": [2], "backend": "cuda"}, cuda_available=False,
                  kernel_hash="x")
    assert plan({"models": ["a"]}, cuda=False).gpus == ["cpu-interpreter"]


def test_software_versions_are_planned(monkeypatch):
    before = plan({"models": ["a"]})
    assert set(before.software) == {"triton", "torch"} and before.software["triton"]
    monkeypatch.setenv("MOEKERNEL_TRITON_VERSION", "9.9.9+test")
    after = plan({"models": ["a"]})
    assert after.software == {**before.software, "triton": "9.9.9+test"}
    assert after.meta()["triton_version"] == "9.9.9+test"
