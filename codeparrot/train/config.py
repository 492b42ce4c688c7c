"""The training stage's one config: model preset and overrides, batch arithmetic, schedule, checkpoint cadence.

Fields that change the training trajectory enter `fingerprint()`, which guards resume; where the run writes
and how often it logs, evaluates or checkpoints do not (`volatile_fields`), so they may change between
a preemption and its resume.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from codeparrot.config import StageConfig
from codeparrot.errors import ConfigError

PresetName = Literal["tiny", "small", "large"]

# The shapes of the presets (see presets.py for the rest of the GPT2Config).
PRESET_SHAPES: dict[str, dict[str, int]] = {
    # CPU tests and the one-command demo: trains in about a minute on 2 cores.
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 128},
    # GPT-2 124M shape (Radford et al. 2019); ~111M parameters with CodeParrot's 32,768-token vocabulary.
    "small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
    # GPT-2 XL shape, what codeparrot (1.5B) used.
    "large": {"n_layer": 48, "n_head": 25, "n_embd": 1600, "n_positions": 1024},
}

PRESET_LR: dict[str, float] = {"tiny": 4e-3, "small": 5e-4, "large": 2e-4}

GCE_PREEMPTED_URL = "http://metadata.google.internal/computeMetadata/v1/instance/preempted"


class ModelOverrides(BaseModel):
    """Per-field overrides of the preset's GPT2Config; unset fields keep the preset's value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_layer: int | None = Field(None, ge=1, description="Transformer blocks.")
    n_head: int | None = Field(None, ge=1, description="Attention heads; must divide n_embd.")
    n_embd: int | None = Field(None, ge=8, description="Hidden width.")
    n_inner: int | None = Field(None, ge=8, description="MLP width (default 4 * n_embd).")
    n_positions: int | None = Field(None, ge=8, description="Longest context the model accepts.")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Residual, embedding and attention dropout (GPT-2 uses 0.1)."
    )
    initializer_range: float | None = Field(None, gt=0.0, description="Std of the normal weight init.")
    activation_function: Literal["gelu_new", "gelu", "relu", "gelu_pytorch_tanh"] | None = Field(
        None, description="MLP activation."
    )

    def set_fields(self) -> dict[str, object]:
        return self.model_dump(exclude_none=True)


class TrainConfig(StageConfig):
    """Every setting of a training run; rerunning with the same config resumes it."""

    volatile_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "save_every",
            "save_every_minutes",
            "keep_last",
            "eval_every",
            "eval_sequences",
            "log_every",
            "checkpoint_dir",
            "token_cache",
            "preemption_url",
            "preemption_poll_seconds",
            "max_skipped_steps",
        }
    )

    # --- model
    preset: PresetName = Field("tiny", description="Model shape: tiny (CPU tests), small (124M), large (1.5B).")
    model: ModelOverrides = Field(default_factory=ModelOverrides, description="Overrides of preset fields.")
    seq_length: int | None = Field(
        None, ge=8, description="Tokens per training sequence; default the model's context (n_positions)."
    )
    # --- batch arithmetic: tokens per optimizer step = processes * batch_size * grad_accum * seq_length
    batch_size: int = Field(8, ge=1, description="Sequences per process per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated into one optimizer step.")
    # The tiny default: 400 steps at 4e-3 bring validation loss on the embedded dataset (32,768 vocab,
    # validation = other repositories) from 10.43 to 6.96, 67 % of step 0; 300 steps reach 68 % and 120
    # steps 73 %. 400 steps take 2.5-4 minutes on 2 cores.
    max_steps: int = Field(400, ge=1, description="Optimizer steps of the whole run.")
    # --- optimizer and schedule. Unset, the peak lr is the preset's: CodeParrot used 5e-4 (small) and
    # 2e-4 (large); the tiny model trains best at 4e-3 (measured against 2e-3 and 3e-3 above).
    lr: float | None = Field(None, gt=0.0, description="Peak learning rate after warmup (default: the preset's).")
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Cosine floor as a fraction of lr (~lr/10 per Chinchilla)."
    )
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps before the cosine decay.")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decay of weights (not biases, LayerNorms).")
    adam_beta1: float = Field(0.9, gt=0.0, lt=1.0, description="AdamW beta1.")
    # 0.95 as GPT-3 and nanoGPT: steadier than 0.999 at large batch and short runs.
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0, description="AdamW beta2.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    # 0: a blow-up stops the run at once. Large-scale trainers skip a few bad batches instead (PaLM skipped
    # ~200-500 batches around each loss spike); a cap keeps a truly diverged run from burning its budget.
    max_skipped_steps: int = Field(
        0, ge=0, description="Updates with a non-finite loss or gradient norm skipped before the run stops as diverged."
    )
    seed: int = Field(1, ge=0, description="Seeds weights, dropout and the data order.")
    # --- performance
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, else fp32."
    )
    compile: bool = Field(False, description="torch.compile the model (GPU runs).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    # --- volatile: cadence and locations
    save_every: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    save_every_minutes: float | None = Field(
        30.0, gt=0.0, description="Also checkpoint when this many minutes passed since the last one."
    )
    keep_last: int = Field(2, description="Committed checkpoints kept (>= 2).")
    eval_every: int = Field(100, ge=1, description="Validation loss every N steps (and at the end).")
    eval_sequences: int = Field(64, ge=1, description="Validation sequences per evaluation (at most).")
    log_every: int = Field(10, ge=1, description="Train metrics every N steps.")
    checkpoint_dir: str | None = Field(
        None, description="Local folder or gs://bucket/prefix for checkpoints; default OUTPUT/checkpoints."
    )
    token_cache: str | None = Field(
        None,
        description="Where a token set is built when none is given (folder or gs://); default CODEPARROT_HOME/tokens.",
    )
    preemption_url: str | None = Field(
        None, description=f"Poll this URL for TRUE as a preemption notice (GCE: {GCE_PREEMPTED_URL})."
    )
    preemption_poll_seconds: float = Field(5.0, gt=0.0, description="Seconds between preemption polls.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.keep_last < 2:
            raise ValueError("keep_last must be >= 2: the newest checkpoint may be damaged, keep one before it")
        shape = self.model_shape()
        if shape["n_embd"] % shape["n_head"]:
            raise ValueError(
                f"n_embd {shape['n_embd']} is not divisible by n_head {shape['n_head']}: "
                "override model.n_head or model.n_embd so that heads split the width evenly"
            )
        if self.context_length > shape["n_positions"]:
            raise ValueError(
                f"seq_length {self.context_length} exceeds the model's context {shape['n_positions']}: "
                "lower seq_length or raise model.n_positions"
            )
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps {self.warmup_steps} must be below max_steps {self.max_steps}: "
                "shorten the warmup or train longer"
            )
        if self.preemption_url is not None and not self.preemption_url.startswith(("http://", "https://")):
            raise ValueError(f"preemption_url {self.preemption_url!r} must be an http(s) URL, e.g. {GCE_PREEMPTED_URL}")
        return self

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else PRESET_LR[self.preset]

    def model_shape(self) -> dict[str, int]:
        """The preset's shape with overrides applied (n_layer, n_head, n_embd, n_positions)."""
        shape = dict(PRESET_SHAPES[self.preset])
        for key in shape:
            value = getattr(self.model, key)
            if value is not None:
                shape[key] = value
        return shape

    @property
    def context_length(self) -> int:
        """Training sequence length: `seq_length`, else the model's context."""
        return self.seq_length if self.seq_length is not None else self.model_shape()["n_positions"]

    def tokens_per_step(self, num_processes: int = 1) -> int:
        return num_processes * self.batch_size * self.grad_accum * self.context_length


def make_config(**fields: object) -> TrainConfig:
    """Build a TrainConfig, turning validation errors into one ConfigError naming each bad field."""
    try:
        return TrainConfig(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            ": ".join(
                part for part in (".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, ")) if part
            )
            for err in exc.errors()
        )
        raise ConfigError(f"invalid training config: {problems}") from None
