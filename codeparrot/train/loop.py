"""The training loop: setup, resume, data, model, loop, checkpoint, final model. Read top to bottom.

Exact resume: every piece of state that decides the next step (weights, AdamW moments, schedule, the
loader's position, each rank's RNG) is checkpointed right after an optimizer step, so a run stopped and
resumed any number of times ends with the same bytes as one that never stopped (on the same hardware
and process count).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import urllib.request
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from codeparrot.artifacts import Resolver
from codeparrot.env import home
from codeparrot.errors import ConfigError
from codeparrot.locks import RunLock, lock_for
from codeparrot.model_card import SUMMARY_FILE
from codeparrot.storage import file_uri_path
from codeparrot.tokens import open_token_set
from codeparrot.train import checkpoint as ckpt
from codeparrot.train.config import TrainConfig
from codeparrot.train.data import (
    Inputs,
    PackedLoader,
    check_blocks,
    fetch_tokens,
    load_tokenizer,
    pin_inputs,
    validation_batches,
)
from codeparrot.train.errors import Diverged, Preempted
from codeparrot.train.identity import run_hash
from codeparrot.train.presets import build_model, count_parameters, flops_per_token, peak_flops

log = logging.getLogger(__name__)

FINAL_DIR = "final"
FINAL_MARKER = "COMPLETE"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainResult:
    final: Path
    step: int
    tokens: int
    val_loss: float | None


def train(
    config: TrainConfig,
    tokenizer: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    tokens: str | os.PathLike[str] | None = None,
    resolver: Resolver | None = None,
    restart: bool = False,
) -> TrainResult:
    """Train (or resume, or find finished) the run of `config`: a tokenizer and a token set (or the dataset
    to build one from), each a reference (`hf://...@REV`, `gs://...`, or a local path).

    Rank 0 holds an exclusive lock on the run folder (and on a checkpoint location outside it) for the
    whole run, so a second trainer on the same folder fails at once, naming the first. `restart`: when
    checkpoints exist but none verifies, move them aside and start at step 0 (a valid one still resumes)."""
    out = Path(output)
    with ExitStack() as held:
        locks: list[RunLock] = []
        if os.environ.get("RANK", "0") == "0":  # before the Accelerator exists: the launcher's rank
            locks.append(lock_for(out))
            if config.checkpoint_dir and not _inside(config.checkpoint_dir, out):
                locks.append(lock_for(config.checkpoint_dir))
            for lock in locks:
                held.enter_context(lock)
        return _run(config, tokenizer, out, data=data, tokens=tokens, resolver=resolver, restart=restart, locks=locks)


def _inside(location: str, folder: Path) -> bool:
    if location.startswith("gs://"):
        return False
    return Path(file_uri_path(location)).absolute().is_relative_to(folder.absolute())


def _run(
    config: TrainConfig,
    tokenizer: str | os.PathLike[str],
    out: Path,
    *,
    data: str | os.PathLike[str] | None,
    tokens: str | os.PathLike[str] | None,
    resolver: Resolver | None,
    restart: bool,
    locks: list[RunLock],
) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    resolver = resolver or Resolver.from_env()
    token_root = config.token_cache or home() / "tokens"
    inputs = pin_inputs(resolver, tokenizer=tokenizer, data=data, tokens=tokens, token_root=token_root)
    run_id = run_hash(config, inputs.dataset_identity, inputs.tokenizer_identity)
    final_dir = out / FINAL_DIR
    done = _finished(final_dir, run_id)
    if done is not None:
        log.info("run already finished: %s (step %d)", final_dir, done.step)
        if os.environ.get("RANK", "0") == "0":  # before the Accelerator exists: the launcher's rank
            metrics = MetricsLog(out, tensorboard=False)
            _emit(metrics, "completed", step=done.step, final=str(final_dir), val_loss=done.val_loss,
                  tokens=done.tokens, cached=True)
            metrics.close()
        return done

    # --- setup: one process per device; rank 0 alone logs, writes metrics and commits checkpoints
    precision = resolve_precision(config.mixed_precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    if not main:
        logging.getLogger("codeparrot").setLevel(logging.WARNING)
    if accelerator.device.type == "cuda":
        # TF32 for what stays fp32 under autocast; bf16 matmuls are unaffected.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out.mkdir(parents=True, exist_ok=True)

    # --- resume point, checked before any heavy work so a changed config fails fast. Rank 0 picks the
    # newest checkpoint that verifies (moving damaged ones aside); the others then see it as the latest.
    store = ckpt.open_store(config.checkpoint_dir or out / "checkpoints", scratch=out / ".scratch")
    if main:
        ckpt.resume_point(store, restart=restart)
    accelerator.wait_for_everyone()
    resume_step = store.latest()
    resume_dir: Path | None = None
    if resume_step is not None:
        with accelerator.local_main_process_first():
            resume_dir = store.fetch(resume_step)
        _check_same_run(resume_dir, run_id, config, inputs, store.describe(resume_step), store.uri)

    # --- data: references fetched once per machine (the token set built if nobody has yet), memory-mapped
    with accelerator.local_main_process_first():
        tokenizer_dir = resolver.resolve(inputs.tokenizer).path
        manifest, token_dir = fetch_tokens(resolver, inputs)
    tokenizer = load_tokenizer(tokenizer_dir)
    _, splits = open_token_set(token_dir)
    seq_len = config.context_length
    train_tokens = check_blocks(splits["train"], seq_len, f"the train split of {inputs.tokens}")
    valid_tokens = check_blocks(splits["valid"], seq_len, f"the valid split of {inputs.tokens}")
    loader = PackedLoader(train_tokens, seq_len, config.batch_size, seed=config.seed, rank=rank, world_size=world)

    # --- model and optimizer; every rank builds identical weights from the seed
    set_seed(config.seed)
    raw_model = build_model(config, len(tokenizer), tokenizer.eos_token_id)
    optimizer = torch.optim.AdamW(
        param_groups(raw_model, config.weight_decay),
        lr=config.peak_lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=1e-8,
        fused=accelerator.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config))
    model, optimizer = accelerator.prepare(raw_model, optimizer)
    if config.compile:
        model = torch.compile(model)

    step, tokens_seen, resumed_at, skipped = 0, 0, [], 0
    if resume_dir is not None:
        step, tokens_seen, resumed_at, skipped = _load(resume_dir, raw_model, optimizer, scheduler, loader, accelerator, config)
        resumed_at = [*resumed_at, step]
        log.info("resumed from %s at step %d", store.describe(resume_step or 0), step)
    else:
        # Different dropout masks per rank (same weights: those were drawn above).
        set_seed(config.seed + rank)

    # --- bookkeeping: batch arithmetic and the MFU denominator
    tokens_per_step = config.tokens_per_step(world)
    n_params = count_parameters(raw_model)
    shape = config.model_shape()
    fpt = flops_per_token(
        count_parameters(raw_model, exclude_positions=True), shape["n_layer"], shape["n_head"],
        shape["n_embd"] // shape["n_head"], seq_len,
    )
    device_name = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else None
    peak = peak_flops(device_name)
    metrics = MetricsLog(out, purge_step=step if resume_dir is not None else None) if main else None
    _emit(
        metrics, "start", step=step, max_steps=config.max_steps, resumed=resume_dir is not None,
        world_size=world, tokens_per_step=tokens_per_step, n_params=n_params, precision=precision,
        device=device_name or accelerator.device.type, run_hash=run_id,
    )
    log.info(
        "training %s (%.1fM params) for %d steps of %d tokens (%d proc x %d seq x %d accum x %d tok) on %s",
        config.preset, n_params / 1e6, config.max_steps, tokens_per_step, world, config.batch_size,
        config.grad_accum, seq_len, device_name or accelerator.device.type,
    )

    def diverged(what: str, at: int) -> Diverged:
        _emit(metrics, "diverged", step=at, reason=what, skipped=skipped)
        if metrics:
            metrics.close()
        last = store.latest()
        kept = f"the last checkpoint {store.describe(last)} is intact" if last is not None else "no checkpoint was written"
        return Diverged(
            f"training diverged at step {at}/{config.max_steps}: {what}; no final model was written and {kept}. "
            f"Lower the learning rate (peak {config.peak_lr:g}) or lengthen the warmup in a new --output folder, "
            "or allow skipped steps (max_skipped_steps) and rerun to resume"
        )

    def evaluate_now() -> float:
        loss = evaluate(raw_model, valid_tokens, config, accelerator)
        if not math.isfinite(loss):
            raise diverged(f"validation loss is {loss}", step)
        _emit(metrics, "eval", step=step, val_loss=loss, perplexity=_perplexity(loss))
        log.info("step %d: validation loss %.4f, perplexity %.2f", step, loss, _perplexity(loss))
        return loss

    def save(step: int) -> None:
        for lock in locks:  # never commit into a run another process has taken over
            lock.check()
        t0 = time.perf_counter()
        save_checkpoint(store, step, tokens_seen, raw_model, optimizer, scheduler, loader, accelerator, config, run_id,
                        inputs, resumed_at, skipped)  # fmt: skip
        _emit(metrics, "checkpoint", step=step, uri=store.describe(step), seconds=round(time.perf_counter() - t0, 3))

    val_loss: float | None = evaluate_now() if step == 0 else None
    last_save = time.monotonic()
    last_saved_step = step if resume_dir is not None else -1
    t_log, tokens_at_log = time.perf_counter(), tokens_seen
    model.train()
    bar = tqdm(total=config.max_steps, initial=step, desc="train", unit="step", disable=None if main else True)
    with bar, StopRequest(config.preemption_url, config.preemption_poll_seconds) as stop:
        while step < config.max_steps:
            # --- one optimizer step over grad_accum micro-batches; gradients sync on the last only
            loss_sum = torch.zeros((), device=accelerator.device)
            for micro in range(config.grad_accum):
                batch = torch.from_numpy(loader.next_batch()).to(accelerator.device, non_blocking=True)
                sync = accelerator.no_sync(model) if micro < config.grad_accum - 1 else nullcontext()
                with sync:
                    loss = model(input_ids=batch, labels=batch).loss
                    accelerator.backward(loss / config.grad_accum)
                loss_sum += loss.detach()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            # A non-finite loss or gradient norm must not reach the weights: skip the update (up to a cap,
            # as large-scale trainers do with loss spikes) or stop. fp16's grad scaler skips inf gradients
            # itself while it calibrates, so there only the loss counts. One small sync per step.
            problem = _nonfinite(accelerator, loss_sum / config.grad_accum, None if precision == "fp16" else grad_norm)
            if problem is not None:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                if skipped > config.max_skipped_steps:
                    raise diverged(problem, step + 1)
                _emit(metrics, "skipped", step=step + 1, reason=problem, skipped=skipped)
                log.warning("step %d: %s; skipped the update (%d of at most %d)", step + 1, problem, skipped,
                            config.max_skipped_steps)  # fmt: skip
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            bar.update()

            # --- metrics (the .item() syncs the device only on logging steps)
            if step % config.log_every == 0 or step == config.max_steps:
                train_loss = accelerator.reduce(loss_sum / config.grad_accum, reduction="mean").item()
                elapsed = time.perf_counter() - t_log
                tok_s = (tokens_seen - tokens_at_log) / elapsed if elapsed > 0 else 0.0
                mfu = fpt * tok_s / (peak * world) if peak else None
                _emit(
                    metrics, "train", step=step, loss=train_loss, lr=scheduler.get_last_lr()[0],
                    tokens=tokens_seen, tokens_per_s=round(tok_s, 1), mfu=mfu, epoch=round(loader.epoch, 4),
                )
                log.info(
                    "step %d/%d loss %.4f lr %.3g %.0f tok/s%s", step, config.max_steps, train_loss,
                    scheduler.get_last_lr()[0], tok_s, f" mfu {mfu:.1%}" if mfu is not None else "",
                )
                t_log, tokens_at_log = time.perf_counter(), tokens_seen
            if step % config.eval_every == 0 or step == config.max_steps:
                val_loss = evaluate_now()
                t_log, tokens_at_log = time.perf_counter(), tokens_seen  # throughput counts training only

            # --- checkpoint on cadence, on the clock, on a stop request; all ranks agree on the decision
            minutes = config.save_every_minutes
            clock_due = minutes is not None and time.monotonic() - last_save >= minutes * 60
            stopping, clock_due = _agree(accelerator, stop.requested, clock_due)
            if step % config.save_every == 0 or clock_due or stopping or step == config.max_steps:
                save(step)
                last_save, last_saved_step = time.monotonic(), step
                t_log, tokens_at_log = time.perf_counter(), tokens_seen
            if stopping:
                _emit(metrics, "preempted", step=step, reason=stop.reason, checkpoint=store.describe(step))
                accelerator.wait_for_everyone()
                if metrics:
                    metrics.close()
                raise Preempted(
                    f"stopped by {stop.reason} at step {step}/{config.max_steps}; checkpoint "
                    f"{store.describe(step)} is committed: rerun the same command to resume"
                )

    if last_saved_step != step:  # resumed at max_steps with no step to take, or max_steps reached
        save(step)
    if val_loss is None:
        val_loss = evaluate_now()

    # --- the final model: save_pretrained (safetensors) + tokenizer, renamed into place, marker last
    result = TrainResult(final=final_dir, step=step, tokens=tokens_seen, val_loss=val_loss)
    if main:
        summary = {
            "dataset": inputs.dataset, "tokenizer": inputs.tokenizer, "token_set": inputs.tokens,
            "checkpoints": store.uri, "resumed_at": resumed_at, "lineage": manifest.lineage,
            "config": config.model_dump(mode="json"),
        }  # fmt: skip
        write_final(raw_model, tokenizer, final_dir, result, run_id, summary)
        _emit(metrics, "completed", step=step, final=str(final_dir), val_loss=val_loss, tokens=tokens_seen)
        assert metrics is not None
        metrics.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


# ---------------------------------------------------------------------------- optimizer and schedule


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """CodeParrot's groups: no weight decay on biases and LayerNorm weights.

    Matched by module type, not by CodeParrot's name test ("LayerNorm.weight"), which never matches
    GPT-2's `ln_1`/`ln_2`/`ln_f` and so decayed every LayerNorm.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, plain = [], []
    for name, p in model.named_parameters():
        (plain if id(p) in no_decay or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class WarmupCosine:
    """lr factor: linear warmup to 1, then cosine down to `min_lr_ratio` at `max_steps`."""

    def __init__(self, config: TrainConfig) -> None:
        self.warmup = config.warmup_steps
        self.total = config.max_steps
        self.floor = config.min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_precision(requested: str) -> str:
    """`auto` means bf16 where the GPU has it, fp32 elsewhere (CPU autocast is slower and not needed)."""
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: Any, config: TrainConfig, accelerator: Any) -> float:
    """Mean next-token loss over the first `eval_sequences` validation blocks, across ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    batches = validation_batches(
        tokens, config.context_length, config.batch_size, config.eval_sequences,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
    )
    for arr in batches:
        batch = torch.from_numpy(arr).to(accelerator.device)
        with accelerator.autocast():
            loss = model(input_ids=batch, labels=batch).loss
        total[0] += loss.double() * len(arr)
        total[1] += len(arr)
    total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    return float(total[0] / total[1])


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    store: ckpt.CheckpointStore,
    step: int,
    tokens_seen: int,
    raw_model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    loader: PackedLoader,
    accelerator: Any,
    config: TrainConfig,
    run_id: str,
    inputs: Inputs,
    resumed_at: list[int],
    skipped: int = 0,
) -> None:
    """Every rank writes its RNG; rank 0 the model, optimizer and train state; then rank 0 commits a
    marker that records every file's size and sha256."""
    from accelerate.utils import gather_object

    folder = store.staging(step)
    names = [ckpt.rng_file(accelerator.process_index)]
    ckpt.save_file(torch.save, ckpt.capture_rng(), folder / names[0])
    if accelerator.is_main_process:
        ckpt.save_file(torch.save, raw_model.state_dict(), folder / ckpt.MODEL_FILE)
        ckpt.save_file(torch.save, optimizer.state_dict(), folder / ckpt.OPTIMIZER_FILE)
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "loader": loader.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler,
            "config_hash": run_id,
            "config": config.fingerprint_fields(),
            "inputs": inputs.as_dict(),
            "resumed_at": resumed_at,
            "skipped_steps": skipped,
            "world_size": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
        }
        text = json.dumps(state, indent=1, sort_keys=True)
        ckpt.save_file(lambda obj, path: path.write_text(obj), text, folder / ckpt.STATE_FILE)
        names += [ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.STATE_FILE]
    digests = {name: ckpt.file_digest(folder / name) for name in names}  # before upload: GCS staging is removed
    store.upload(step, names)
    everyone = gather_object([digests]) if accelerator.num_processes > 1 else [digests]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {name: digest for part in everyone for name, digest in part.items()}
        store.commit(step, {"step": step, "config_hash": run_id, "files": files, "time": time.time()})
        for old in store.prune(config.keep_last):
            log.info("removed old checkpoint %s", store.describe(old))
        log.info("checkpoint %s committed", store.describe(step))
    accelerator.wait_for_everyone()


def _check_same_run(folder: Path, run_id: str, config: TrainConfig, inputs: Inputs, where: str, root: str) -> None:
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    if state["config_hash"] == run_id:
        return
    old, new = state.get("config", {}), config.fingerprint_fields()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    before = state.get("inputs", {})
    changed += [k.removesuffix("_identity") for k in ("dataset_identity", "tokenizer_identity") if before.get(k) != getattr(inputs, k)]
    what = ", ".join(changed) or "dataset or tokenizer"
    raise ConfigError(
        f"{where} belongs to a different run (changed: {what}); resume it with the original settings, "
        f"or start fresh with another --output folder (or delete {root})"
    )


def _load(
    folder: Path,
    raw_model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    loader: PackedLoader,
    accelerator: Any,
    config: TrainConfig,
) -> tuple[int, int, list[int]]:
    """Restore everything a checkpoint holds; the RNG last, after nothing else may draw from it.

    Returns the step, the tokens seen, the steps at which the run resumed before and the skipped updates."""
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    raw_model.load_state_dict(torch.load(folder / ckpt.MODEL_FILE, map_location="cpu", weights_only=True))
    optimizer.load_state_dict(torch.load(folder / ckpt.OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    if state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    if state["world_size"] != accelerator.num_processes:
        log.warning(
            "checkpoint was written by %d processes, resuming with %d: data is not replayed, but the "
            "trajectory differs from an uninterrupted run", state["world_size"], accelerator.num_processes,
        )
    rng_path = folder / ckpt.rng_file(accelerator.process_index)
    if rng_path.exists():
        ckpt.restore_rng(torch.load(rng_path, map_location="cpu", weights_only=True))
    else:
        from accelerate.utils import set_seed

        set_seed(config.seed + accelerator.process_index + state["step"])
    resumed_at = [int(s) for s in state.get("resumed_at", [])]
    return int(state["step"]), int(state["tokens_seen"]), resumed_at, int(state.get("skipped_steps", 0))


# ---------------------------------------------------------------------------- final model


def write_final(
    raw_model: Any, tokenizer: Any, final_dir: Path, result: TrainResult, run_id: str, summary: dict[str, Any]
) -> None:
    """save_pretrained model + tokenizer into `final.tmp`, rename to `final`, then the marker."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    raw_model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    summary = {"step": result.step, "tokens": result.tokens, "val_loss": result.val_loss, "run_hash": run_id, **summary}
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp, final_dir)
    (final_dir / FINAL_MARKER).write_text(run_id)
    log.info("final model: %s", final_dir)


def _finished(final_dir: Path, run_id: str) -> TrainResult | None:
    marker = final_dir / FINAL_MARKER
    if not marker.is_file():
        return None
    if marker.read_text().strip() != run_id:
        raise ConfigError(
            f"{final_dir} holds the final model of a different run (config, dataset or tokenizer changed): "
            f"pass another --output folder or delete {final_dir.parent}"
        )
    summary = json.loads((final_dir / SUMMARY_FILE).read_text())
    return TrainResult(final_dir, summary["step"], summary["tokens"], summary["val_loss"])


# ---------------------------------------------------------------------------- metrics and stop signals


class MetricsLog:
    """Rank 0's metrics: one JSON line per event (flushed, for the Prefect task to tail) and TensorBoard."""

    def __init__(self, out: Path, *, purge_step: int | None = None, tensorboard: bool = True) -> None:
        self.fh = open(out / METRICS_FILE, "a", buffering=1)  # noqa: SIM115 - held for the run, closed by close()
        self.tb: Any = None
        if not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)
        except ImportError:  # pragma: no cover - tensorboard is a core dependency
            log.warning("tensorboard is not installed; metrics go to %s only", out / METRICS_FILE)

    def write(self, event: str, fields: dict[str, Any]) -> None:
        # Strict JSON for every reader (NaN and Infinity are not JSON): a non-finite number is written as null.
        record = {"event": event, "time": round(time.time(), 3), **{k: _finite_or_none(v) for k, v in fields.items()}}
        self.fh.write(json.dumps(record, allow_nan=False) + "\n")
        if self.tb is not None and "step" in fields:
            for key, value in fields.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{event}/{key}", value, fields["step"])

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _nonfinite(accelerator: Any, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> str | None:
    """What is not finite on any rank (the mean loss, the gradient norm), or None when both are."""
    values = torch.stack([loss.float(), grad_norm.float() if grad_norm is not None else torch.zeros_like(loss.float())])
    flags = torch.cat([values, (~torch.isfinite(values)).float()]).to(accelerator.device)
    if accelerator.num_processes > 1:
        flags[2:] = accelerator.reduce(flags[2:], reduction="sum")
    found = flags.tolist()
    if not (found[2] or found[3]):
        return None
    parts = [f"loss {found[0]}" if found[2] else "", f"gradient norm {found[1]}" if found[3] else ""]
    return " and ".join(p for p in parts if p) + " (not finite)"


def _emit(metrics: MetricsLog | None, event: str, **fields: Any) -> None:
    if metrics is not None:
        metrics.write(event, fields)


def _agree(accelerator: Any, *flags: bool) -> list[bool]:
    """Each flag true on any rank becomes true on all (one small all-reduce; free with one process)."""
    if accelerator.num_processes == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=accelerator.device)
    return [bool(v) for v in accelerator.reduce(t, reduction="sum").tolist()]


class StopRequest:
    """Set by SIGTERM/SIGINT, or by a preemption notice polled from the metadata server."""

    def __init__(self, poll_url: str | None = None, poll_seconds: float = 5.0) -> None:
        self.requested = False
        self.reason: str | None = None
        self.poll_url = poll_url
        self.poll_seconds = poll_seconds
        self._previous: dict[int, Any] = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        if self.poll_url:
            self._thread = threading.Thread(target=self._poll, name="preemption-poll", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 5)

    def request(self, reason: str) -> None:
        if not self.requested:
            log.warning("%s: finishing the current step, then checkpointing and exiting", reason)
        self.requested, self.reason = True, self.reason or reason

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.request(signal.Signals(signum).name)

    def _poll(self) -> None:
        assert self.poll_url is not None
        req = urllib.request.Request(self.poll_url, headers={"Metadata-Flavor": "Google"})
        while not self._done.wait(self.poll_seconds):
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.read().decode().strip().upper() == "TRUE":
                        self.request("preemption notice")
                        return
            except OSError as exc:
                log.debug("preemption poll of %s failed: %s", self.poll_url, exc)
