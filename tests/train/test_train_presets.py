from __future__ import annotations

import pytest
import torch

from codeparrot.train.config import ModelOverrides, TrainConfig
from codeparrot.train.presets import build_model, count_parameters, flops_per_token, gpt2_config, peak_flops


def _meta_model(config: TrainConfig, vocab: int = 32768):
    with torch.device("meta"):  # shapes only: no memory, no init time
        return build_model(config, vocab, 0)


def test_small_is_gpt2_124m_shape_at_111m_with_codeparrot_vocab() -> None:
    n = count_parameters(_meta_model(TrainConfig(preset="small")))
    assert 110e6 < n < 112e6


def test_large_is_gpt2_xl_shape() -> None:
    n = count_parameters(_meta_model(TrainConfig(preset="large")))
    assert 1.45e9 < n < 1.6e9


def test_codeparrot_attention_settings_and_sdpa() -> None:
    model = build_model(TrainConfig(), 512, 7)
    cfg = model.config
    assert cfg.scale_attn_by_inverse_layer_idx and cfg.reorder_and_upcast_attn
    assert cfg._attn_implementation == "sdpa"
    assert (cfg.vocab_size, cfg.eos_token_id, cfg.bos_token_id) == (512, 7, 7)
    assert next(model.parameters()).dtype == torch.float32


def test_overrides_apply_per_field() -> None:
    cfg = gpt2_config(TrainConfig(model=ModelOverrides(n_layer=3, n_embd=96, n_head=3, dropout=0.0)), 100, 0)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (3, 96, 3)
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    assert cfg.n_positions == TrainConfig().model_shape()["n_positions"]  # untouched fields keep the preset


def test_same_seed_same_weights() -> None:
    torch.manual_seed(3)
    a = build_model(TrainConfig(), 256, 0).state_dict()
    torch.manual_seed(3)
    b = build_model(TrainConfig(), 256, 0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flops_per_token_of_the_small_preset() -> None:
    # 6N with N ~ 110M (without the 1024 x 768 position table), plus attention 12 * L * H * Q * T
    # = 12 * 12 * 12 * 64 * 1024 ~ 1.1e8: ~7.7e8 FLOPs per trained token.
    model = _meta_model(TrainConfig(preset="small"))
    n = count_parameters(model, exclude_positions=True)
    assert n == count_parameters(model) - 1024 * 768
    fpt = flops_per_token(n, 12, 12, 64, 1024)
    assert fpt == pytest.approx(6 * n + 12 * 12 * 12 * 64 * 1024)
    assert 7.5e8 < fpt < 8.0e8


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
     ("NVIDIA A100-SXM4-80GB", 312e12), ("cpu", None), (None, None)],
)
def test_peak_flops_by_device_name(name: str | None, peak: float | None) -> None:
    assert peak_flops(name) == peak


def test_gradient_checkpointing_is_switched_on_by_config() -> None:
    assert not build_model(TrainConfig(), 256, 0).is_activation_checkpointing
    model = build_model(TrainConfig(gradient_checkpointing=True), 256, 0)
    assert model.is_activation_checkpointing and not model.config.use_cache
