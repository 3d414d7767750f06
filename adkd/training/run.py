"""Training: compose the config, train, test, write the run folder (``adkd fit``, ``python -m adkd.run``).

Writes into the run folder: ``.hydra/`` (the composed config and the overrides),
``config_resolved.yaml``, ``status.json`` (running, finished, failed or interrupted),
``checkpoints/last.ckpt`` (every epoch), ``metrics.json`` and ``figures/*.png``. The Python API
(:func:`run`) writes the same folder as the CLI. Heavy imports happen inside ``run`` so that
``--help`` and config errors answer at once.

Stopped runs (Ctrl-C, SIGTERM from a scheduler, a requeued SLURM job) keep the checkpoint of their
last finished epoch; the same command with ``resume=true`` continues them in the same folder.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from adkd.data.unified import datamodule as build_datamodule
from adkd.deploy.checkpoints import read_checkpoint
from adkd.errors import CheckpointError, ConfigError, user_error_in
from adkd.training.config import CONF_DIR, compose, upgrade_overrides, validate
from adkd.training.quiet import quiet_lightning_notes
from adkd.training.runs import (
    RunTaken,
    claim_run,
    config_tree,
    disk_full_message,
    launched_sweep,
    newest_checkpoint,
    read_status,
    requeued_job,
    resume_requested,
    write_status,
)

log = logging.getLogger("adkd")
PROGRAM = "python -m adkd.run"  # how the resume commands it prints begin (adkd fit sets its own)


class RunInterrupted(Exception):
    """Training stopped by a signal; the run folder keeps its last checkpoint."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint = signum, checkpoint


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra context (a config built by hand)
        return []


def _loggers(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def _check_accelerator(cfg: DictConfig) -> None:
    import torch

    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "trainer=gpu asks for a CUDA GPU, but torch sees none (torch.cuda.is_available() is False). "
            "Use trainer=cpu, or check the NVIDIA driver and CUDA_VISIBLE_DEVICES."
        )


def _check_checkpoint(path: Path, model) -> None:  # noqa: ANN001
    """A checkpoint this model can continue from, or an error naming the file."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path} (ckpt_path).")
    state = read_checkpoint(path)["state_dict"]
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {path} does not fit {type(model).__name__} as configured: {len(missing)} of its "
            f"weights missing (e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. "
            f"{sorted(unexpected)[:2]}). Was it written by another method, backbone or layer choice?"
        )


def _check_free_space(output_dir: Path, model) -> None:  # noqa: ANN001
    """Warn before training when a checkpoint (weights, Adam's two moments, written beside the
    previous one) will not fit where the run writes."""
    import shutil

    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    needed = 2 * (weights + 2 * trained)
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        log.warning(
            "Only %.1f MB free where %s lies, and a checkpoint needs about %.1f MB (written beside the "
            "previous one): training will fail when it saves. Free space, or set paths.output_root "
            "elsewhere.",
            free / 2**20,
            output_dir,
            needed / 2**20,
        )


def run(cfg: DictConfig) -> dict:
    """Train and test one (method, dataset, category); returns the metrics.json content. With
    ``category=all``, one model on every category, tested per category (:mod:`adkd.data.unified`)."""
    import lightning as L
    from hydra.utils import instantiate

    validate(cfg)  # every value a user sets, before anything is built or read
    output_dir = Path(cfg.output_dir)
    resume = resume_requested(cfg.get("resume")) or requeued_job(output_dir)
    previous = read_status(output_dir).get("status")
    if resume and previous == "finished":  # e.g. a sweep relaunched into its folder
        log.info("%s already finished; nothing to resume", output_dir)
        return json.loads((output_dir / "metrics.json").read_text())
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # from RANK, LOCAL_RANK or SLURM_PROCID: Lightning's relaunched ranks, SLURM's tasks
        claim_run(output_dir)  # held until this process ends: a second resume of this run is refused
        if resume and previous is None and not cfg.ckpt_path:
            log.warning(
                "resume=true: no unfinished run of this command under %s; starting a new run in %s",
                output_dir.parent,
                output_dir,
            )
        write_status(output_dir, "running")
        OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)
        tree = config_tree(cfg)
        (output_dir / "config_tree.txt").write_text(tree)
        print(f"Run folder: {output_dir} (its config: config_tree.txt)", flush=True)
    quiet_lightning_notes()
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print themselves; not twice via Hydra's root
        logging.getLogger(name).propagate = False
    _check_accelerator(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg.dataset)  # cheap checks only (the category, the root); category=all: unified
    model = instantiate(cfg.method, _convert_="all")  # plain containers: checkpoints load with weights_only
    model.run_config = {**OmegaConf.to_container(cfg, resolve=True), "overrides": _overrides()}
    ckpt_path = Path(cfg.ckpt_path).expanduser() if cfg.ckpt_path else None
    if resume and ckpt_path is None and previous is not None:
        ckpt_path = newest_checkpoint(output_dir)
        log.info("Resuming %s from %s (it was %s)", output_dir, ckpt_path or "the start (no checkpoint yet)", previous)
    if ckpt_path is not None:
        _check_checkpoint(ckpt_path, model)
    _check_free_space(output_dir, model)
    loggers = _loggers(cfg)
    for logger in loggers:  # the composed config: W&B's run config (sweep parameters included), CSV's hparams.yaml
        logger.log_hyperparams({k: v for k, v in model.run_config.items() if k != "callbacks"})
    try:
        return _fit_and_test(cfg, datamodule, model, loggers, output_dir, ckpt_path)
    finally:
        from lightning.pytorch.loggers import WandbLogger

        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()  # each multirun job gets a W&B run of its own


def _fit_and_test(cfg: DictConfig, datamodule, model, loggers: list, output_dir: Path, ckpt_path) -> dict:  # noqa: ANN001
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)

    def stage(fn, **kwargs) -> None:  # noqa: ANN001
        try:
            fn(model, datamodule=datamodule, **kwargs)
        except SystemExit as stop:  # Lightning ends Ctrl-C with sys.exit(1) and SIGTERM with SIGTERMException
            if any(getattr(c, "requeued", False) for c in callbacks):  # submitit requeued the job: let it exit
                write_status(output_dir, "requeued", checkpoint=str(newest_checkpoint(output_dir) or ""))
                raise
            if trainer.interrupted:
                signum = signal.SIGTERM if isinstance(stop, SIGTERMException) else signal.SIGINT
                raise RunInterrupted(signum, newest_checkpoint(output_dir)) from stop
            raise
        if trainer.interrupted:
            raise RunInterrupted(signal.SIGINT, newest_checkpoint(output_dir))

    stage(trainer.fit, ckpt_path=ckpt_path)
    if trainer.world_size > 1:  # metrics need the whole test set in one process
        torch.distributed.barrier()
        rank = trainer.global_rank
        # The test's own trainer is single-process: left alive, the group would make its barriers
        # (around prepare_data) wait forever for ranks that have finished.
        torch.distributed.destroy_process_group()
        if rank != 0:
            return {}
        trainer = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            logger=loggers or False,
            precision=cfg.trainer.precision,
            default_root_dir=str(output_dir),
            callbacks=callbacks,
        )
    stage(trainer.test, verbose=False)
    write_status(output_dir, "finished")
    results = output_dir / "metrics.json"  # the evaluation callback's (conf/run.yaml)
    return json.loads(results.read_text()) if results.is_file() else {}


def _resume_command() -> str:
    """The command that continues this run; for a job of a multirun, the whole sweep in its folder
    (finished jobs are kept, the others continue from their checkpoints)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg is not None and hydra_cfg.hydra.mode != RunMode.MULTIRUN:
        # A folder the user named is where the run continues: without it, resume looks elsewhere.
        run_dir = [o for o in hydra_cfg.hydra.overrides.hydra if o.startswith("hydra.run.dir=")]
        return _command([*_overrides(), *run_dir])
    # A job of a multirun, or the process that launched jobs running elsewhere (parallel, submitit):
    # the sweep's own arguments are in its folder.
    sweep_dir = str(hydra_cfg.hydra.sweep.dir) if hydra_cfg is not None else launched_sweep()
    try:
        overrides = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.overrides
    except (OSError, ValueError, TypeError):  # not written yet, or no sweep
        return ""
    launcher = [o for o in overrides.hydra if o.startswith(("hydra/", "hydra.launcher.", "hydra.sweeper."))]
    return _command([*launcher, *overrides.task], f"hydra.sweep.dir={sweep_dir}", multirun=True)


def _command(arguments: list[str], *extra: str, multirun: bool = False) -> str:
    import shlex

    kept = [a for a in arguments if not a.startswith(("resume=", "ckpt_path=", "hydra.sweep.dir="))]
    words = [*(["-m"] if multirun else []), *map(shlex.quote, [*kept, *extra]), "resume=true"]
    return " ".join([PROGRAM, *words])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="run")
def main(cfg: DictConfig) -> float | None:
    output_dir = Path(cfg.output_dir)
    try:
        results = run(cfg)
    except RunInterrupted as stop:
        where = f"Last checkpoint: {stop.checkpoint}" if stop.checkpoint else "No epoch had finished: no checkpoint."
        write_status(output_dir, "interrupted", signal=str(stop), checkpoint=str(stop.checkpoint or ""))
        command = _resume_command()
        print(
            f"\nInterrupted ({stop}). {where}" + (f"\nResume with: {command}" if command else ""),
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        write_status(output_dir, "interrupted", signal="SIGINT", checkpoint=str(newest_checkpoint(output_dir) or ""))
        print("\nInterrupted (SIGINT) before training.", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    except RunTaken as taken:  # the folder is another process's: its status is not ours to write
        print(f"\nerror: {taken}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as err:
        full = disk_full_message(err, output_dir)
        if full is not None:
            command = _resume_command()
            try:
                write_status(output_dir, "failed", error=full, checkpoint=str(newest_checkpoint(output_dir) or ""))
            except OSError:  # not even in place: the report then lists the run as never finished
                pass
            print(
                f"\nerror: {full}" + (f"\nThen resume with: {command}" if command else ""), file=sys.stderr, flush=True
            )
            sys.exit(1)
        user_error = user_error_in(err)
        write_status(output_dir, "failed", error=str(user_error or f"{type(err).__name__}: {err}"))
        if user_error is not None:
            print(f"\nerror: {user_error}", file=sys.stderr, flush=True)
            sys.exit(1)
        raise
    return objective(results, cfg.get("optimized_metric"))


def objective(results: dict, name: str | None) -> float | None:
    """What a sweeper optimises (``optimized_metric``, e.g. val/pixel_ap): a validation metric,
    never a test one (metrics.json's ``validation``, adkd.training.callbacks.SyntheticValidation)."""
    if not name:
        return None
    split, _, metric = name.partition("/")
    if split != "val":
        raise ConfigError(f"optimized_metric must be a validation metric (val/<name>), got {name!r}")
    value = (results.get("validation") or {}).get(metric)
    if value is None:
        raise ConfigError(
            f"optimized_metric {name!r}: the run has no validation {metric!r} "
            f"(has: {sorted(results.get('validation') or {})})"
        )
    return float(value)


def preflight(arguments: list[str]) -> str | None:
    """The config and the data's place checked before Hydra makes the run folder, so that a typo
    (``category=botle``) leaves no folder behind: the problem, or None. Multiruns and Hydra's own
    flags are left to Hydra (each job checks its own)."""
    import tempfile

    from hydra.errors import HydraException

    if any(a.startswith("-") for a in arguments):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            cfg = compose(arguments, scratch)
        except HydraException:
            return None  # Hydra says it better, before it makes the folder
        try:
            validate(cfg)
            build_datamodule(cfg.dataset)  # the category, the root: cheap checks, no file is read
        except Exception as err:  # noqa: BLE001 - what the run would say, said before it starts
            cause = user_error_in(err)
            if cause is None:
                return None
            return str(cause)
    return None


def cli(program: str = "python -m adkd.run") -> None:
    """``python -m adkd.run``, ``adkd fit``: Ctrl-C in a multirun's launching process (its jobs stop on their own,
    each keeping its last checkpoint) ends with the command that resumes the sweep, not a traceback.
    Overrides in an earlier version's spelling (``method.map_sigma``, ``method.k``) are rewritten."""
    global PROGRAM
    PROGRAM = program
    sys.argv[1:], notes = upgrade_overrides(sys.argv[1:])
    for note in notes:
        print(note, file=sys.stderr)
    problem = preflight(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        main()
    except KeyboardInterrupt:
        command = _resume_command()
        print("\nInterrupted (SIGINT)." + (f" Resume with: {command}" if command else ""), file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
