"""GPT-2 models built from config (never downloaded), and the FLOP arithmetic behind the MFU estimate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from codeparrot.train.config import TrainConfig

if TYPE_CHECKING:
    from transformers import GPT2Config, PreTrainedModel

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (no sparsity), matched on the device name in
# order, so the PCIe H100 (756 TFLOP/s) is tested before the SXM one.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def gpt2_config(config: TrainConfig, vocab_size: int, eos_token_id: int) -> GPT2Config:
    """The GPT2Config of a preset with overrides; vocabulary and special ids come from the tokenizer."""
    from transformers import GPT2Config

    overrides = config.model.set_fields()
    dropout = overrides.pop("dropout", None)
    kwargs: dict[str, object] = {**config.model_shape(), **overrides}
    if dropout is not None:
        kwargs.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2Config(
        vocab_size=vocab_size,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        # As CodeParrot's initialize_model.py: scale attention by 1/layer and upcast it, for fp16/bf16
        # stability of deep models (Mistral's GPT-2 recipe).
        scale_attn_by_inverse_layer_idx=True,
        reorder_and_upcast_attn=True,
        use_cache=not config.gradient_checkpointing,
        **kwargs,
    )


def build_model(config: TrainConfig, vocab_size: int, eos_token_id: int) -> PreTrainedModel:
    """A freshly initialised GPT-2 LM with SDPA attention (initialised from the current torch RNG)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(
        gpt2_config(config, vocab_size, eos_token_id), attn_implementation="sdpa", dtype=torch.float32
    )
    # transformers derives the loss from the class name, which "GPT2LMHeadModel" does not match; say it.
    model.loss_type = "ForCausalLM"
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def count_parameters(model: PreTrainedModel, *, exclude_positions: bool = False) -> int:
    """Unique parameters (tied embeddings once); optionally without the position table."""
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters():
        if id(p) in seen or (exclude_positions and name.endswith("wpe.weight")):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_length: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12*L*H*Q*T for attention (PaLM appendix B)."""
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_dim * seq_length


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak of a GPU by name, or None when unknown (and on CPU, where MFU is not reported)."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return value
    return None
