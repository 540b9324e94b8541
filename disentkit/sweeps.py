"""sweep(): many mixing schedules over the same seeds, sampled once per shared prefix.

Two schedules that use the same weights for steps 0..i-1 give the same x_t at step i (the noise is fixed by the
tape), so there is no need to compute that prefix twice. We sample a prefix trie of the schedules:

    live = one branch per prompt pair, holding every schedule and the tape's x_T
    for each UNet call j (sampling step i = step_of_call(j)):
        split every branch whose schedules disagree on lam[i]       # fork: copy x_t and the scheduler state
        one guided UNet call for all live branches x seeds           # chunked by max_batch runs
        step each branch with its own scheduler and the tape's noise

A switch sweep (c0 until step k, then c1, for K values of k) costs about N + sum_k (N - k) branch-steps per seed
instead of K * N: the pure-c0 "trunk" runs once and each switch step forks off it. The images equal those of
:func:`disentkit.sample` with the same schedules up to float rounding (the batches differ, so the matmul kernels may
too), and the 8-bit images are the same up to one level; the same sweep again is the same, bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .conditioning import Conditioning
from .errors import InvalidScheduleError
from .noise import NoiseTape
from .pipeline import pipeline_device, pipeline_dtype, with_compiled_unet
from .samplers import make_scheduler, step_of_call
from .sampling import (
    SampleResult,
    StepState,
    TrajectoryRecorder,
    decode,
    guided_output_in_chunks,
    mixed_embeddings,
    predict_x0,
    run_index,
    run_safety_checker,
    sdxl_time_ids,
    tape_step,
    to_pil,
)
from .schedules import MixSchedule, stack_weights


@dataclass
class _Branch:
    """A node of the schedule trie that is still being sampled: schedules that have used identical weights so far.

    Every branch carries its own copy of the scheduler because multistep samplers keep history in it (PLMS its past
    eps ``ets``, DPM-Solver ``model_outputs``/``lower_order_nums``/``_step_index``, Euler ``_step_index``), and that
    history differs between branches once they fork.
    """

    pair: int
    members: list[int]  # schedule indices, all with identical weights so far
    x: torch.Tensor  # (B, C, h, w) the current latents of the B seeds
    scheduler: object


def _split(branch: _Branch, lam_i: torch.Tensor) -> list[_Branch]:
    """Fork ``branch`` into one child per distinct weight row ``lam_i[s]`` among its members (first stays put).

    Grouping is by exact equality: only schedules whose weights are bit-identical share computation.
    """
    groups: dict[bytes, list[int]] = {}
    for s in branch.members:
        groups.setdefault(lam_i[s].numpy().tobytes(), []).append(s)
    if len(groups) == 1:
        return [branch]
    first, *rest = groups.values()
    children = [_Branch(branch.pair, first, branch.x, branch.scheduler)]
    for members in rest:  # a fork: the copies carry the whole sampler state of the shared prefix
        children.append(_Branch(branch.pair, members, branch.x.clone(), copy.deepcopy(branch.scheduler)))
    return children


def count_branch_steps(schedules: Sequence[MixSchedule], scheduler: str, steps: int) -> int:
    """UNet evaluations per seed and prompt pair of a prefix-shared sweep (each doubles with guidance).

    Compare with ``len(schedules) * calls``, the cost of sampling every schedule on its own.
    """
    width = max(s.weights.reshape(steps, -1).shape[1] for s in schedules)  # per-token schedules set the width
    w = [s.weights.reshape(steps, -1).expand(steps, width).contiguous() for s in schedules]  # as stack_weights
    calls = steps + 1 if scheduler == "plms" else steps
    total = 0
    for j in range(calls):
        i = step_of_call(scheduler, j)
        total += len({ws[: i + 1].numpy().tobytes() for ws in w})
    return total


def sweep(
    pipe,
    cond: Conditioning,
    schedules: MixSchedule | Sequence[MixSchedule],
    tape: NoiseTape,
    guidance: float = 7.5,
    *,
    max_batch: int | None = None,
    record: bool = False,
    callback: Callable[[StepState], None] | None = None,
    progress: bool = True,
    compile: bool = False,
) -> SampleResult:
    """Sample every (prompt pair, schedule, seed) like :func:`disentkit.sample`, computing shared prefixes once.

    Args:
        pipe, cond, schedules, tape, guidance: as for :func:`disentkit.sample`.
        max_batch: at most this many runs (branch x seed; two UNet rows each with guidance) per UNet call.
        record: keep the trajectory of every run in ``result.trajectory`` (same layout as ``sample``'s).
        callback: called after every UNet call with a :class:`StepState` over all R runs (shared runs repeat).
        progress: show a progress bar.
        compile: run the UNet through ``torch.compile`` (compiles once per UNet; pays off only for long sweeps).
    Returns:
        :class:`SampleResult` with the runs in ``sample``'s order (pair, schedule, seed; seed fastest). The same
        sweep on the same device gives the same images bit for bit; against :func:`disentkit.sample` they are equal
        up to float rounding and the same 8-bit images up to one level (see ``sample``'s reproducibility note).
        ``meta["unet_rows"]`` is the number of UNet batch rows evaluated, ``meta["unshared_rows"]`` what
        sampling each run on its own would have cost.
    """
    schedules = [schedules] if isinstance(schedules, MixSchedule) else list(schedules)
    if not schedules:
        raise InvalidScheduleError("no schedules given; pass a MixSchedule or a non-empty list of them.")
    tape.check(pipe)
    tape.warn_if_guidance_differs(guidance)
    weights = stack_weights(schedules, tape.steps, cond.tokens)  # (S, N, T)
    runs = run_index(cond.pairs, schedules, tape, cond)
    S, B = len(schedules), tape.batch
    device, dtype = pipeline_device(pipe), pipeline_dtype(pipe)
    model_pipe = with_compiled_unet(pipe) if compile else pipe
    rows_per_run = 2 if guidance > 1 else 1

    with torch.inference_mode():
        clock = make_scheduler(pipe, tape.scheduler)  # gives the timesteps and alphas; never stepped
        clock.set_timesteps(tape.steps, device=device)
        x_T = tape.x_T.to(device, dtype) * clock.init_noise_sigma  # (B, C, h, w)
        live = [_Branch(p, list(range(S)), x_T.clone(), copy.deepcopy(clock)) for p in range(cond.pairs)]
        lam_dev = weights.to(device)
        observers = [f for f in (TrajectoryRecorder() if record else None, callback) if f is not None]
        unet_rows = 0

        for j, t in enumerate(tqdm(clock.timesteps, desc="sweep", disable=not progress, leave=False)):
            i = step_of_call(tape.scheduler, j)
            live = [child for b in live for child in _split(b, weights[:, i])]

            # Inputs of all live runs, branch-major then seed: (L*B, ...).
            x_in = torch.cat([b.scheduler.scale_model_input(b.x, t) for b in live])
            lam_rows = torch.stack([lam_dev[b.members[0], i] for b in live]).repeat_interleave(B, dim=0)  # (L*B, T)
            pair_rows = torch.tensor([b.pair for b in live], device=cond.c0.device).repeat_interleave(B)
            c = cond.select(pair_rows)
            c_i, pooled_i = mixed_embeddings(c, lam_rows)  # c_i = (1 - lam_i) c0 + lam_i c1: (L*B, T, D)
            time_ids = sdxl_time_ids(pipe, c, x_in.shape[-2:], len(x_in))
            rows = tape.rows_per_call(max_batch) or len(x_in)  # an exact tape: one run per call, as in sample()
            out = guided_output_in_chunks(model_pipe, c, x_in, t, c_i, pooled_i, guidance, time_ids, rows)
            unet_rows += rows_per_run * len(x_in)

            if observers:
                _observe(observers, live, j, i, t, clock, x_in, out, weights, S, B, cond.pairs)
            for b, out_b in zip(live, out.split(B)):  # every branch gets the same per-seed noise
                b.x = tape_step(b.scheduler, tape, j, out_b, t, b.x)

        # Every final branch is one distinct image per seed; decode it once and hand it to all its schedules.
        finals = torch.cat([b.x for b in live])  # (L*B, C, h, w)
        # an exact tape decodes one image per call too, so its pixels are those of sample() in any batch
        per_call = tape.rows_per_call(max_batch) or max_batch or len(finals)
        checked = [run_safety_checker(pipe, decode(pipe, z).float()) for z in finals.split(per_call)]
        decoded = torch.cat([image.cpu() for image, _ in checked])
        flags = None if checked[0][1] is None else [f for _, part in checked for f in part]
        finals = finals.float().cpu()
        latents = torch.empty(len(runs), *finals.shape[1:])
        pixels = torch.empty(len(runs), *decoded.shape[1:])
        nsfw = [False] * len(runs) if flags is not None else None
        for bi, b in enumerate(live):
            rows = _run_rows(b, S, B)  # (members, B)
            latents[rows] = finals[bi * B : (bi + 1) * B]
            pixels[rows] = decoded[bi * B : (bi + 1) * B]
            if nsfw is not None:
                for members_row in rows.reshape(-1, B).tolist():
                    for r, f in zip(members_row, flags[bi * B : (bi + 1) * B]):
                        nsfw[r] = f
    latents, pixels = latents.clone(), pixels.clone()  # out of inference mode, so results can feed autograd code

    trajectory = observers[0].trajectory() if record else None
    calls = len(clock.timesteps)
    meta = {
        "scheduler": tape.scheduler, "steps": tape.steps, "eta": tape.eta, "guidance": guidance,
        "unet_rows": unet_rows, "unshared_rows": rows_per_run * len(runs) * calls,
    }  # fmt: skip
    return SampleResult(to_pil(pixels), pixels, latents, runs, schedules, trajectory, meta, nsfw)


def sweep_switch(
    pipe,
    cond: Conditioning,
    tape: NoiseTape,
    switch_steps: Sequence[int],
    guidance: float = 7.5,
    late: float = 1.0,
    **kwargs,
) -> SampleResult:
    """The paper's switch-step sweep: for each k in ``switch_steps``, c0 for steps 0..k-1 and weight ``late`` of c1
    from step k on (``MixSchedule.switch(N, k, 0.0, late)``). The pure-c0 prefix is sampled once and forked at
    each k. Keyword arguments go to :func:`sweep`; runs are ordered (pair, switch step, seed)."""
    schedules = [MixSchedule.switch(tape.steps, int(k), 0.0, late) for k in switch_steps]
    return sweep(pipe, cond, schedules, tape, guidance, **kwargs)


# ---- helpers ------------------------------------------------------------------------------------------------
def _run_rows(branch: _Branch, S: int, B: int) -> torch.Tensor:
    """Row numbers in the result of the runs (pair, schedule, seed) a branch stands for: (members, B)."""
    members = torch.tensor(branch.members)
    return (branch.pair * S + members)[:, None] * B + torch.arange(B)[None, :]


def _observe(observers, live, j, i, t, clock, x_in, out, weights, S, B, P):
    """Expand the live branches' tensors to one row per run and pass a :class:`StepState` to each observer."""
    source = torch.empty(P * S * B, dtype=torch.long)  # run row -> live row
    for bi, b in enumerate(live):
        source[_run_rows(b, S, B).flatten()] = (bi * B + torch.arange(B)).repeat(len(b.members))
    source = source.to(x_in.device)
    x0 = predict_x0(clock, x_in, out, t)
    sched = torch.arange(P * S * B) // B % S
    state = StepState(j, i, float(t), x_in[source], x0[source], weights[sched, i])
    for f in observers:
        f(state)
