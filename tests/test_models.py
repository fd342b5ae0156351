"""moekernel.models: model names/ids/folders → per-GPU fused-MoE kernel shapes (CPU, offline)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moekernel import models
from moekernel.models import ModelShape, kernel_shape, list_models, load_model_config
from moekernel.shapes import KernelShape

REQUIRED = {
    "mixtral-8x7b", "mixtral-8x22b", "dbrx", "jamba", "deepseek-v2", "deepseek-v2-lite", "deepseek-v3",
    "qwen1.5-moe-a2.7b", "qwen2-57b-a14b", "qwen3-30b-a3b", "qwen3-235b-a22b", "qwen3-next-80b-a3b",
    "glm-4.5", "llama-4-scout", "gpt-oss-20b", "gpt-oss-120b", "olmoe",
}  # fmt: skip

# tp=1, dtype=auto keys, from the models' public config.json values (E, I, hidden size, top-k).
EXPECTED_TP1 = {
    "mixtral-8x7b": "E8-N14336-K4096-top2-bf16",
    "mixtral-8x22b": "E8-N16384-K6144-top2-bf16",
    "dbrx": "E16-N10752-K6144-top4-bf16",
    "jamba": "E16-N14336-K4096-top2-bf16",
    "deepseek-v2": "E160-N1536-K5120-top6-bf16",
    "deepseek-v2-lite": "E64-N1408-K2048-top6-bf16",
    "deepseek-v3": "E256-N2048-K7168-top8-fp8_w8a8-block128x128",
    "qwen1.5-moe-a2.7b": "E60-N1408-K2048-top4-bf16",
    "qwen2-57b-a14b": "E64-N2560-K3584-top8-bf16",
    "qwen3-30b-a3b": "E128-N768-K2048-top8-bf16",
    "qwen3-235b-a22b": "E128-N1536-K4096-top8-bf16",
    "qwen3-next-80b-a3b": "E512-N512-K2048-top10-bf16",
    "glm-4.5": "E160-N1536-K5120-top8-bf16",
    "llama-4-scout": "E16-N8192-K5120-top1-bf16",
    "gpt-oss-20b": "E32-N2880-K2880-top4-bf16",
    "gpt-oss-120b": "E128-N2880-K2880-top4-bf16",
    "olmoe": "E64-N1024-K2048-top8-bf16",
}


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path_factory, monkeypatch):
    """Point the HF cache at an empty folder: results must not depend on this machine's cache."""
    import huggingface_hub.constants

    cache = tmp_path_factory.mktemp("hf_cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def write_config(folder, values):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values))
    return folder


# A small Mixtral-like config for folder tests; numbers chosen to be unlike any catalog entry.
TINY_MIXTRAL = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_local_experts": 6,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "torch_dtype": "bfloat16",
}


# ----------------------------------------------------------------------------- catalog


def test_catalog_holds_the_required_models():
    assert set(list_models()) == REQUIRED
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_catalog_entry_cites_its_source(name):
    values = json.loads((models.CATALOG_DIR / f"{name}.json").read_text())
    source = values["_source"]
    assert source.count("/") == 1, source  # a Hugging Face id, org/name
    assert values["model_type"]
    assert values["architectures"]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_catalog_entry_resolves_at_tp1(name):
    shape = kernel_shape(name)
    assert isinstance(shape, ModelShape)
    assert shape.key == EXPECTED_TP1[name]
    assert KernelShape.from_key(shape.key) == shape.kernel
    assert shape.E == shape.num_experts and shape.N == shape.intermediate_size  # tp=1: nothing sharded


# ----------------------------------------------------------------------------- known numbers


def test_mixtral_8x7b_tp2():
    shape = kernel_shape("mixtral-8x7b", tp_size=2)
    assert (shape.E, shape.N, shape.K, shape.topk) == (8, 7168, 4096, 2)
    assert shape.dtype == "bf16" and shape.block_shape is None
    assert shape.key == "E8-N7168-K4096-top2-bf16"
    assert (shape.model, shape.tp_size, shape.expert_parallel) == ("mixtral-8x7b", 2, False)


def test_deepseek_v3_tp8_auto_is_fp8_blockwise():
    shape = kernel_shape("deepseek-v3", tp_size=8)
    assert shape.key == "E256-N256-K7168-top8-fp8_w8a8-block128x128"
    assert shape.dtype == "fp8_w8a8"
    assert shape.block_shape == (128, 128)


def test_qwen3_30b_a3b_uses_moe_intermediate_size():
    shape = kernel_shape("qwen3-30b-a3b", tp_size=1)
    # intermediate_size (6144) is the dense width; the experts are moe_intermediate_size wide
    assert (shape.E, shape.N, shape.K, shape.topk) == (128, 768, 2048, 8)


def test_dbrx_reads_ffn_config_and_d_model():
    shape = kernel_shape("dbrx", tp_size=4)
    assert (shape.E, shape.N, shape.K, shape.topk) == (16, 2688, 6144, 4)
    assert shape.model_type == "dbrx"


def test_llama4_scout_comes_from_nested_text_config():
    root = load_model_config("llama-4-scout")
    assert getattr(root, "num_local_experts", None) is None  # not at the top level
    shape = kernel_shape("llama-4-scout", tp_size=2)
    assert (shape.E, shape.N, shape.K, shape.topk) == (16, 4096, 5120, 1)
    assert shape.model_type == "llama4_text"


def test_gpt_oss_auto_is_bf16_with_a_note_on_mxfp4():
    shape = kernel_shape("gpt-oss-120b", tp_size=4)
    assert shape.key == "E128-N720-K2880-top4-bf16"
    assert "mxfp4" in shape.note


def test_deepseek_v2_lite_and_glm45_at_tp():
    assert kernel_shape("deepseek-v2-lite", tp_size=2).key == "E64-N704-K2048-top6-bf16"
    assert kernel_shape("glm-4.5", tp_size=8).key == "E160-N192-K5120-top8-bf16"


# ----------------------------------------------------------------------------- expert parallel


def test_expert_parallel_splits_experts_not_width():
    shape = kernel_shape("deepseek-v3", tp_size=8, expert_parallel=True)
    assert (shape.E, shape.N, shape.K, shape.topk) == (32, 2048, 7168, 8)
    assert shape.ep_size == 8 and shape.expert_parallel
    assert shape.num_experts == 256
    assert shape.key == "E32-N2048-K7168-top8-fp8_w8a8-block128x128"


def test_expert_parallel_allows_topk_above_local_experts():
    shape = kernel_shape("mixtral-8x7b", tp_size=8, expert_parallel=True)
    assert (shape.E, shape.N, shape.topk) == (1, 14336, 2)


def test_expert_parallel_uneven_split_is_an_error():
    with pytest.raises(ValueError) as err:
        kernel_shape("qwen1.5-moe-a2.7b", tp_size=8, expert_parallel=True)
    msg = str(err.value)
    assert "qwen1.5-moe-a2.7b" in msg and "60 experts" in msg and "ep=8" in msg
    assert "[1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60]" in msg


# ----------------------------------------------------------------------------- errors


def test_tp_not_dividing_intermediate_size():
    with pytest.raises(ValueError) as err:
        kernel_shape("mixtral-8x7b", tp_size=3)
    msg = str(err.value)
    assert "mixtral-8x7b" in msg and "I=14336" in msg and "tp=3" in msg
    assert "tp sizes that work: [1, 2, 4, 7, 8, 14, 16, 28, 32, 56, 64]" in msg


@pytest.mark.parametrize("tp", [0, -2, 1.5, True, "2"])
def test_tp_must_be_a_positive_int(tp):
    with pytest.raises(ValueError, match="tp_size"):
        kernel_shape("mixtral-8x7b", tp_size=tp)


def test_unknown_model_lists_the_catalog_and_the_other_ways():
    with pytest.raises(ValueError) as err:
        kernel_shape("acme/not-a-model")
    msg = str(err.value)
    assert "'acme/not-a-model'" in msg
    for name in REQUIRED:
        assert name in msg
    assert "cache" in msg and "config.json" in msg


def test_bad_dtype_lists_the_allowed_values():
    with pytest.raises(ValueError) as err:
        kernel_shape("mixtral-8x7b", dtype="fp32")
    assert "auto, bf16, fp16, fp8_w8a8, int8_w8a16, int8_w8a8" in str(err.value)


def test_dense_architecture_is_refused_with_the_supported_list(tmp_path):
    folder = write_config(
        tmp_path / "llama",
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512},
    )
    with pytest.raises(ValueError) as err:
        kernel_shape(folder)
    msg = str(err.value)
    assert "'llama'" in msg
    assert "Mixtral" in msg and "deepseek_v3" in msg and "dbrx" in msg and "qwen3_moe" in msg


def test_folder_without_config_json(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        kernel_shape(tmp_path)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("name", "dtype", "key"),
    [
        ("deepseek-v3", "bf16", "E256-N256-K7168-top8-bf16"),
        ("deepseek-v3", "fp8_w8a8", "E256-N256-K7168-top8-fp8_w8a8-block128x128"),  # keeps the model's blocks
        ("mixtral-8x7b", "fp8_w8a8", "E8-N1792-K4096-top2-fp8_w8a8"),  # per-tensor
        ("mixtral-8x7b", "int8_w8a16", "E8-N1792-K4096-top2-int8_w8a16"),
        ("mixtral-8x7b", "int8_w8a8", "E8-N1792-K4096-top2-int8_w8a8"),
        ("mixtral-8x7b", "fp16", "E8-N1792-K4096-top2-fp16"),
        ("deepseek-v3", "int8_w8a8", "E256-N256-K7168-top8-int8_w8a8"),
    ],
)
def test_explicit_dtype(name, dtype, key):
    tp = 8
    assert kernel_shape(name, tp_size=tp, dtype=dtype).key == key


def test_auto_dtype_of_a_float16_fp8_folder(tmp_path):
    half = write_config(tmp_path / "half", {**TINY_MIXTRAL, "torch_dtype": "float16"})
    assert kernel_shape(half).dtype == "fp16"
    fp8 = write_config(
        tmp_path / "fp8",
        {**TINY_MIXTRAL, "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}},
    )
    shape = kernel_shape(fp8)
    assert shape.dtype == "fp8_w8a8" and shape.block_shape is None


def test_unsupported_quantization_falls_back_with_a_note(tmp_path):
    folder = write_config(tmp_path / "awq", {**TINY_MIXTRAL, "quantization_config": {"quant_method": "awq"}})
    shape = kernel_shape(folder)
    assert shape.dtype == "bf16" and "'awq'" in shape.note


# ----------------------------------------------------------------------------- folders, ids, prefix


def test_folder_with_config_json(tmp_path):
    folder = write_config(tmp_path / "tiny", TINY_MIXTRAL)
    shape = kernel_shape(folder, tp_size=2)
    assert (shape.E, shape.N, shape.K, shape.topk) == (6, 768, 512, 2)
    assert shape.model == str(folder)
    assert kernel_shape(str(folder / "config.json"), tp_size=2).key == shape.key  # the file itself works too


def test_folder_with_architecture_unknown_to_transformers(tmp_path):
    # remote-code model: transformers does not know the type; the DeepSeek field names still work
    values = {
        "model_type": "acme_moe",
        "architectures": ["AcmeMoeForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig"},
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "moe_intermediate_size": 256,
        "n_routed_experts": 32,
        "num_experts_per_tok": 4,
    }
    folder = write_config(tmp_path / "acme", values)
    config = load_model_config(folder)
    assert config.model_type == "acme_moe"
    assert kernel_shape(folder, tp_size=2).key == "E32-N128-K1024-top4-bf16"


def test_nested_thinker_config_is_found(tmp_path):
    text = {"model_type": "qwen3_omni_moe_text", "hidden_size": 2048, "moe_intermediate_size": 768,
            "intermediate_size": 6144, "num_experts": 128, "num_experts_per_tok": 8}  # fmt: skip
    folder = write_config(
        tmp_path / "omni",
        {"model_type": "acme_omni", "architectures": ["AcmeOmni"], "thinker_config": {"text_config": text}},
    )
    assert kernel_shape(folder).key == "E128-N768-K2048-top8-bf16"


def test_prefix_descends_into_a_sub_config(tmp_path):
    decoder = {**TINY_MIXTRAL, "num_local_experts": 4}
    folder = write_config(tmp_path / "wrapped", {"model_type": "acme_wrapper", "decoder": decoder})
    with pytest.raises(ValueError, match="prefix"):  # not a place searched by default: the error suggests prefix
        kernel_shape(folder)
    assert kernel_shape(folder, prefix="decoder").key == "E4-N1536-K512-top2-bf16"
    sub = load_model_config(folder, prefix="decoder")
    assert sub.num_local_experts == 4


def test_prefix_on_a_catalog_model_and_a_bad_prefix():
    assert kernel_shape("llama-4-scout", prefix="text_config").key == EXPECTED_TP1["llama-4-scout"]
    assert type(load_model_config("llama-4-scout", prefix="text_config")).__name__ == "Llama4TextConfig"
    with pytest.raises(ValueError) as err:
        kernel_shape("llama-4-scout", prefix="language_model")
    assert "'language_model'" in str(err.value) and "text_config" in str(err.value)


@pytest.mark.parametrize(
    "model_id",
    ["mistralai/Mixtral-8x7B-v0.1", "mistralai/mixtral-8x7b-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"],
)
def test_hf_id_resolves_through_the_catalog_without_a_cache(model_id, empty_hf_cache):
    assert not any(empty_hf_cache.iterdir())
    shape = kernel_shape(model_id, tp_size=2)
    assert shape.key == "E8-N7168-K4096-top2-bf16"
    assert shape.model == model_id


def test_hf_id_resolves_from_the_local_cache(empty_hf_cache):
    repo = empty_hf_cache / "models--acme--tiny-moe"
    snapshot = repo / "snapshots" / ("0" * 40)
    write_config(snapshot, {**TINY_MIXTRAL, "num_local_experts": 12})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert kernel_shape("acme/tiny-moe").key == "E12-N1536-K512-top2-bf16"


# ----------------------------------------------------------------------------- list-valued fields


HUNYUAN_LIKE = {
    "model_type": "hunyuan_v1_moe",
    "architectures": ["HunYuanMoEV1ForCausalLM"],
    "hidden_size": 1024,
    "num_experts": 16,
    "num_hidden_layers": 3,
}


def test_list_valued_fields_with_one_value(tmp_path):
    folder = write_config(
        tmp_path / "hy", {**HUNYUAN_LIKE, "moe_topk": [4, 4, 4], "moe_intermediate_size": [512, 512, 512]}
    )
    shape = kernel_shape(folder)
    assert shape.key == "E16-N512-K1024-top4-bf16" and shape.note is None


def test_list_valued_fields_that_differ_warn_and_use_the_first(tmp_path):
    folder = write_config(
        tmp_path / "hy", {**HUNYUAN_LIKE, "moe_topk": [4, 4, 4], "moe_intermediate_size": [512, 768, 768]}
    )
    with pytest.warns(UserWarning, match="moe_intermediate_size differs"):
        shape = kernel_shape(folder)
    assert shape.N == 512
    assert "512, 768" in shape.note


def test_per_layer_expert_counts_skip_dense_layers(tmp_path):
    folder = write_config(tmp_path / "m", {**TINY_MIXTRAL, "model_type": "acme_moe", "num_local_experts": [0, 8, 8]})
    assert kernel_shape(folder).E == 8


# ----------------------------------------------------------------------------- objects


def test_model_shape_is_frozen_and_serialisable():
    shape = kernel_shape("deepseek-v3", tp_size=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        shape.E = 1
    assert shape.kernel == KernelShape(256, 256, 7168, 8, "fp8_w8a8", (128, 128))
    data = shape.to_dict()
    assert data["key"] == shape.key and data["block_shape"] == [128, 128]
    json.dumps(data)


def test_load_model_config_returns_transformers_configs():
    from transformers import MixtralConfig, PretrainedConfig

    assert isinstance(load_model_config("mixtral-8x7b"), MixtralConfig)
    dbrx = load_model_config("dbrx")  # a transformers class or the plain fallback, by version
    assert isinstance(dbrx, PretrainedConfig)
    ffn = dbrx.ffn_config
    assert (ffn["moe_num_experts"] if isinstance(ffn, dict) else ffn.moe_num_experts) == 16


def test_catalog_configs_are_not_shared_between_calls():
    first = load_model_config("mixtral-8x7b")
    first.num_local_experts = 99
    assert kernel_shape("mixtral-8x7b").E == 8


def test_a_folder_named_like_a_catalog_model_does_not_shadow_it(tmp_path, monkeypatch):
    (tmp_path / "olmoe").mkdir()  # no config.json inside
    monkeypatch.chdir(tmp_path)
    assert kernel_shape("olmoe").key == EXPECTED_TP1["olmoe"]


def test_block_quantized_shard_must_hold_whole_blocks():
    assert models.kernel_shape("deepseek-v3", tp_size=16).N == 128
    with pytest.raises(ValueError, match=r"N=64 rows .* fp8 block 128; tp sizes that work: \[1, 2, 4, 8, 16\]"):
        models.kernel_shape("deepseek-v3", tp_size=32)


# ----------------------------------------------------------------------------- fields the file must hold


def test_a_field_missing_from_config_json_is_an_error_not_a_library_default(tmp_path):
    from transformers import MixtralConfig

    values = {k: v for k, v in TINY_MIXTRAL.items() if k != "num_local_experts"}
    folder = write_config(tmp_path / "no-experts", values)
    assert MixtralConfig(**values).num_local_experts == 8  # what the config class would have tuned: another model's
    with pytest.raises(ValueError) as err:
        kernel_shape(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: {folder / 'config.json'} (model_type 'mixtral') lacks the number of experts "
                          "(num_local_experts).")
    assert "add the field(s) to that file" in msg


def test_every_missing_field_is_named_with_its_spellings(tmp_path):
    values = {k: v for k, v in TINY_MIXTRAL.items() if k not in ("num_experts_per_tok", "hidden_size")}
    with pytest.raises(ValueError) as err:
        kernel_shape(write_config(tmp_path / "m", values))
    assert "lacks experts per token (num_experts_per_tok or experts_per_token); the hidden size (hidden_size)" in str(
        err.value)


def test_a_missing_field_of_a_nested_config_names_the_sub_config(tmp_path):
    scout = json.loads((models.CATALOG_DIR / "llama-4-scout.json").read_text())
    del scout["text_config"]["intermediate_size"]
    with pytest.raises(ValueError, match=r"sub-config 'text_config' of .*config.json \(model_type 'llama4_text'\) "
                                         r"lacks the expert intermediate size \(intermediate_size\)"):
        kernel_shape(write_config(tmp_path / "scout", scout))


def test_the_dtype_field_of_transformers_5_is_read_too(tmp_path):
    values = {k: v for k, v in TINY_MIXTRAL.items() if k != "torch_dtype"}
    assert kernel_shape(write_config(tmp_path / "half", {**values, "dtype": "float16"})).dtype == "fp16"
    assert kernel_shape(write_config(tmp_path / "bf", values)).dtype == "bf16"


def test_resolving_the_catalog_prints_no_deprecation_warning():
    # A fresh process: transformers warns once per process, so an earlier test could hide a repeat here.
    code = "import moekernel.models as m\nfor name in m.list_models(): m.kernel_shape(name)\n"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
