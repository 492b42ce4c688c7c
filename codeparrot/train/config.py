"""The training stage's one config: model preset and overrides, batch arithmetic, schedule, checkpoint cadence.

Fields that change the training trajectory enter `fingerprint()`, which guards resume; where the run writes
and how often it logs, evaluates or checkpoints do not (`volatile_fields`), so they may change between
a preemption and its resume.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from codeparrot.config import CONFIG_MODEL, StageConfig
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

# What a preset brings besides its shape: the run it was tuned for. A field left empty in the config (or
# the Prefect form) takes the chosen preset's value, so changing the preset never leaves another preset's
# context, warmup or learning rate behind.
# - tiny: 400 steps at 4e-3 bring validation loss on the embedded dataset (32,768 vocab, validation = other
#   repositories) from 10.43 to 6.96, 67 % of step 0 (300 steps: 68 %, 120 steps: 73 %; 2e-3 and 3e-3 do
#   worse); 400 steps take 2.5-4 minutes on 2 cores.
# - small: CodeParrot-small in the book (chapter 10): 12 sequences of 1024 tokens on each of 16 GPUs, lr 5e-4,
#   2000 warmup steps, 150k steps; on one process 16 accumulation steps keep its 192-sequence step.
# - large: codeparrot (1.5B) in the book: 2 sequences per GPU x 16 accumulation steps, lr 2e-4, 750 warmup
#   steps, 50k steps.
PRESET_RECIPES: dict[str, dict[str, int | float]] = {
    "tiny": {"batch_size": 8, "grad_accum": 1, "max_steps": 400, "warmup_steps": 20, "lr": 4e-3, "save_every": 50, "eval_every": 100},
    "small": {"batch_size": 12, "grad_accum": 16, "max_steps": 150_000, "warmup_steps": 2000, "lr": 5e-4, "save_every": 500, "eval_every": 2500},
    "large": {"batch_size": 2, "grad_accum": 16, "max_steps": 50_000, "warmup_steps": 750, "lr": 2e-4, "save_every": 500, "eval_every": 2500},
}  # fmt: skip


def _by_preset(field: str) -> str:
    return ", ".join(f"{name} {recipe[field]:g}" for name, recipe in PRESET_RECIPES.items())


GCE_PREEMPTED_URL = "http://metadata.google.internal/computeMetadata/v1/instance/preempted"


class ModelOverrides(BaseModel):
    """Per-field overrides of the preset's GPT2Config; unset fields keep the preset's value."""

    model_config = CONFIG_MODEL

    n_layer: int | None = Field(None, ge=1, title="Layers", description="Transformer blocks.")
    n_head: int | None = Field(None, ge=1, title="Attention heads", description="Attention heads; must divide n_embd.")
    n_embd: int | None = Field(None, ge=8, title="Hidden width", description="Hidden width (n_embd).")
    n_inner: int | None = Field(None, ge=8, title="MLP width", description="MLP width (default 4 * n_embd).")
    n_positions: int | None = Field(None, ge=8, title="Context", description="Longest context the model accepts (n_positions).")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Residual, embedding and attention dropout (GPT-2 uses 0.1)."
    )
    initializer_range: float | None = Field(None, gt=0.0, le=1.0, description="Std of the normal weight init.")
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
    preset: PresetName = Field(
        "tiny",
        description="Model shape and the run it was tuned for: tiny (CPU tests, minutes), small (124M, the book's "
        "CodeParrot-small), large (1.5B). Empty fields below take the preset's values.",
    )
    seq_length: int | None = Field(
        None, ge=8, description="Tokens per training sequence; default the model's context (n_positions)."
    )
    # --- batch arithmetic: tokens per optimizer step = processes * batch_size * grad_accum * seq_length
    # Empty: the preset's (PRESET_RECIPES); after validation these hold the values the run uses.
    batch_size: int | None = Field(
        None, ge=1, le=4096, description=f"Sequences per process per micro-batch; empty: the preset's ({_by_preset('batch_size')})."
    )
    grad_accum: int | None = Field(
        None, ge=1, le=4096, title="Gradient accumulation",
        description=f"Micro-batches accumulated into one optimizer step; empty: the preset's ({_by_preset('grad_accum')}).",
    )  # fmt: skip
    max_steps: int | None = Field(
        None, ge=1, description=f"Optimizer steps of the whole run; empty: the preset's ({_by_preset('max_steps')})."
    )
    # --- optimizer and schedule
    lr: float | None = Field(
        None, gt=0.0, title="Learning rate",
        description=f"Peak learning rate after warmup; empty: the preset's ({_by_preset('lr')}).",
    )  # fmt: skip
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Cosine floor as a fraction of lr (~lr/10 per Chinchilla)."
    )
    warmup_steps: int | None = Field(
        None, ge=0,
        description=f"Linear warmup steps before the cosine decay; empty: the preset's ({_by_preset('warmup_steps')}), "
        "at most a tenth of max_steps.",
    )  # fmt: skip
    weight_decay: float = Field(0.1, ge=0.0, le=1.0, description="AdamW decay of weights (not biases, LayerNorms).")
    adam_beta1: float = Field(0.9, gt=0.0, lt=1.0, description="AdamW beta1.")
    # 0.95 as GPT-3 and nanoGPT: steadier than 0.999 at large batch and short runs.
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0, description="AdamW beta2.")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6, title="Gradient clipping norm", description="Gradient clipping norm.")
    # 0: a blow-up stops the run at once. Large-scale trainers skip a few bad batches instead (PaLM skipped
    # ~200-500 batches around each loss spike); a cap keeps a truly diverged run from burning its budget.
    max_skipped_steps: int = Field(
        0, ge=0, le=100_000, description="Updates with a non-finite loss or gradient norm skipped before the run stops as diverged."
    )
    seed: int = Field(1, ge=0, le=2**32 - 1, description="Seeds weights, dropout and the data order.")
    # --- performance
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, else fp32."
    )
    compile: bool = Field(False, description="torch.compile the model (GPU runs).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    # --- volatile: cadence and locations
    save_every: int | None = Field(
        None, ge=1, description=f"Checkpoint every N optimizer steps; empty: the preset's ({_by_preset('save_every')})."
    )
    # 15 minutes: a preemption without notice (node loss) costs minutes of work, not hours.
    save_every_minutes: float | None = Field(
        15.0, gt=0.0, le=24 * 60, description="Also checkpoint when this many minutes passed since the last one; None: by steps only."
    )
    # Two: the newest checkpoint may be damaged (killed mid-write elsewhere), so one before it is kept.
    keep_last: int = Field(  # the bound in the schema; the validator below says why
        2, le=1000, json_schema_extra={"minimum": 2}, description="Committed checkpoints kept (at least 2)."
    )
    eval_every: int | None = Field(
        None, ge=1, description=f"Validation loss every N steps (and at the end); empty: the preset's ({_by_preset('eval_every')})."
    )
    eval_sequences: int = Field(64, ge=1, le=100_000, description="Validation sequences per evaluation (at most).")
    log_every: int = Field(10, ge=1, le=100_000, description="Train metrics every N steps.")
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
    preemption_poll_seconds: float = Field(5.0, gt=0.0, le=3600, description="Seconds between preemption polls.")
    # --- last in the form: rarely changed
    model: ModelOverrides = Field(
        default_factory=ModelOverrides, title="Advanced: model overrides",
        description="Per-field overrides of the preset's GPT-2 shape; empty fields keep the preset's.",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _preset_recipe(cls, data: object) -> object:
        """Empty recipe fields take the chosen preset's values; the warmup at most a tenth of the run."""
        if not isinstance(data, dict) or data.get("preset", "tiny") not in PRESET_RECIPES:
            return data  # not a mapping, or an unknown preset: the field validators say what is wrong
        recipe = PRESET_RECIPES[data.get("preset", "tiny")]
        filled = {**data, **{k: v for k, v in recipe.items() if data.get(k) is None and k != "warmup_steps"}}
        if data.get("warmup_steps") is None and isinstance(filled["max_steps"], int):
            filled["warmup_steps"] = min(int(recipe["warmup_steps"]), filled["max_steps"] // 10)
        return filled

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
        return float(self.lr if self.lr is not None else PRESET_RECIPES[self.preset]["lr"])

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
