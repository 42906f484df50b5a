"""Codebase protocols: the DDIM and PNDM codebases' own sampling loops, reproduced exactly.

dpms runs every solver on its own grid (t_start = T, t_end = 1/N, α and network time of one index).
The loops that produced the DDIM and PNDM papers' tables differ in where they start, which ᾱ an update
reads and where they stop; `sample(..., protocol=...)` reproduces them:

* ``"ddim-code"`` (ermongroup/ddim, functions/denoising.py `generalized_steps`): index list `seq`
  (uniform: range(0, N, N // steps); quadratic: int(linspace(0, √(0.8 N), steps)²)), visited from the
  top; at index i the network gets input i and the update reads ᾱ_i, at the next index j it reads ᾱ_j,
  and after index 0 one last step goes to ᾱ = 1 (the x₀ prediction; `compute_alpha` pads the betas with a
  leading 0). x_T is the state at ᾱ_{seq[-1]}.
* ``"pndm-code"`` (luping-liu/PNDM, runner/method.py): the same index lists; the network gets input i
  but `transfer` reads ᾱ at table index ⌊i⌋ + 1 of the unpadded cumulative table (a one-index offset), so
  the last step, from index 0 to −1, ends at ᾱ_0 = 1 − β₀ and x_T is the state at ᾱ_{seq[-1]+1}.
  F-PNDM's midpoints (i + j)/2 are half-integers on odd strides and on the quadratic list: the network
  gets the half-integer input, `transfer` truncates it (`.long()`, towards zero: −½ reads ᾱ_1).

Both run dpms's registered solver functions unchanged (their update algebra is the codebases'), over the
codebase's grid of network times t = (n + 1)/N (n = −1 for the final "index"), with a schedule view
(`CodebaseAlphas`) that hands each update the ᾱ its codebase reads. The noise function still receives
continuous time t = (n + 1)/N, so a wrapped network sees input n, as in the codebase.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import DpmsError

PROTOCOLS = ("ddim-code", "pndm-code")
# the solvers each codebase has (its own names: DDIM's generalized_steps; PNDM's DDIM/S-PNDM/F-PNDM/FON)
CODEBASE_SOLVERS = {"ddim-code": ("ddim",), "pndm-code": ("ddim", "spndm", "pndm", "fon")}
CODEBASE_SKIPS = ("discrete_uniform", "discrete_quadratic")
# padded-table index of network input n: k = trunc(n) + offset into [1, ᾱ_0, …, ᾱ_{N−1}]
TABLE_OFFSET = {"ddim-code": 1, "pndm-code": 2}


class RepeatedIndexWarning(UserWarning):
    """A codebase's index list repeats an index: its loop takes a zero-length step (one wasted call)."""


def uniform_list_steps(n_total: int) -> dict[int, int]:
    """{entries: the runners' `timesteps` S} of every uniform list range(0, N, N // S) the codebases build
    (the largest S for each length: S itself when its list has S entries). The length can exceed S:
    N = 1000, S = 6 gives stride 166, 7 entries; S = 9 gives stride 111, 10 entries, and S = 10 stride 100."""
    out: dict[int, int] = {}
    for s in range(1, n_total + 1):
        out[len(range(0, n_total, n_total // s))] = s
    return out


def codebase_indices(skip: str, steps: int, n_total: int) -> list[int]:
    """The codebases' increasing index list of `steps` entries (repeats kept, as theirs are).

    Uniform: range(0, N, N // S), the list both runners build for `timesteps` S, for the S whose list has
    `steps` entries (the network calls it makes); usually S = steps. Quadratic: DDIM's
    int(linspace(0, √(0.8 N), steps)²).
    """
    if skip == "discrete_uniform":
        lengths = uniform_list_steps(n_total)
        if steps not in lengths:
            near = " or ".join(str(n) for n in sorted(sorted(lengths, key=lambda n: (abs(n - steps), n))[:2]))
            raise DpmsError(f"no uniform list of the codebases, range(0, {n_total}, {n_total} // S), has {steps} entries; nearest step counts: {near}")
        return list(range(0, n_total, n_total // lengths[steps]))
    if skip == "discrete_quadratic":
        return [int(s) for s in np.linspace(0, np.sqrt(n_total * 0.8), steps) ** 2]
    raise DpmsError(f"a codebase protocol runs the codebases' index lists: skip must be one of {', '.join(CODEBASE_SKIPS)}, got {skip!r}")


@dataclass(frozen=True)
class CodebaseAlphas:
    """The ᾱ a codebase's update reads at network time t = (n + 1)/N, as a schedule view for the solvers.

    n is recovered to the nearest half-integer (a float32 grid holds (n + 1)/N only to round-off), then
    the table index is k = trunc(n) + offset into [1, ᾱ_0, …, ᾱ_{N−1}]: offset 1 for DDIM's code
    (n = −1 → ᾱ = 1), 2 for PNDM's (`alphas_cump[t.long() + 1]`). `N` and `is_discrete` let FON take
    one table step δ = 1/N, PNDM's `transfer(x, t, t − 1)`.
    """

    alpha_bar: Tensor  # (N + 1,) float64, on the samples' device: 1, ᾱ_0, …, ᾱ_{N−1}
    offset: int
    N: int
    is_discrete: bool = True

    def _alpha_bar(self, t: Tensor) -> Tensor:
        half_n = torch.round(2 * (t.to(torch.float64) * self.N - 1))  # 2n, exact
        k = torch.trunc(half_n / 2).long() + self.offset
        return self.alpha_bar[k]

    def alpha(self, t) -> Tensor:
        return self._alpha_bar(t).sqrt().to(dtype=t.dtype)

    def sigma(self, t) -> Tensor:
        return (1 - self._alpha_bar(t)).sqrt().to(dtype=t.dtype)

    def on_grid(self, *grids) -> "CodebaseAlphas":
        return self  # table look-ups: nothing to precompute


@dataclass
class CodebasePlan:
    timesteps: Tensor  # network times t = (n + 1)/N of the outer loop, then 0 (n = −1)
    state_times: Tensor  # the dpms time of the state after each step: where ᾱ the update read sits (0: ᾱ = 1)
    schedule: CodebaseAlphas
    indices: list[int]  # the codebase's increasing index list


def check_request(protocol: str, solver: str, schedule, t_start, t_end, timesteps) -> None:
    if protocol not in PROTOCOLS:
        raise DpmsError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)} (or none: dpms's own grid)")
    if solver not in CODEBASE_SOLVERS[protocol]:
        raise DpmsError(f"protocol {protocol!r} runs the solvers that codebase has ({', '.join(CODEBASE_SOLVERS[protocol])}), not {solver!r}; drop the protocol to run it on dpms's grid")
    if not schedule.is_discrete:
        raise DpmsError(f"protocol {protocol!r} runs a discrete codebase loop, but the schedule {schedule!r} is continuous; use a discrete model or drop the protocol")
    if schedule.clipped_steps:
        raise DpmsError(f"protocol {protocol!r} runs the codebase's whole table of {schedule.N + schedule.clipped_steps} steps, but {schedule!r} dropped its last "
                        f"{schedule.clipped_steps} (λ < −5.1, DPM-Solver's clipping); drop the protocol for this model")
    if timesteps is not None or t_start is not None or (t_end is not None and not math.isclose(float(t_end), schedule.t_end)):
        raise DpmsError(f"protocol {protocol!r} fixes the codebase's own start and end; drop timesteps/t_start/t_end (t_end may only be the schedule's default {schedule.t_end:g})")


def plan(protocol: str, schedule, skip: str, steps: int, dtype, device) -> CodebasePlan:
    """The codebase's grid for `steps` loop steps, and the ᾱ view its updates read."""
    if skip not in CODEBASE_SKIPS:
        raise DpmsError(f"protocol {protocol!r} runs the codebases' index lists: skip must be one of {', '.join(CODEBASE_SKIPS)}, got {skip!r}")
    n_total = schedule.N
    seq = codebase_indices(skip, steps, n_total)
    offset = TABLE_OFFSET[protocol]
    if max(seq) + offset > n_total:  # PNDM's transfer reads alphas_cump[n + 1]: past the end for n = N − 1
        raise DpmsError(f"protocol {protocol!r}: the list's top index {max(seq)} reads ᾱ at table index {max(seq) + 1}, past the table's end (the codebase raises IndexError there); use fewer steps")
    repeats = len(seq) - len(set(seq))
    if repeats:
        head = ", ".join(map(str, seq[:4]))
        warnings.warn(
            f"protocol {protocol!r}: the codebase's {skip} list for {steps} steps repeats indices ({head}, …): "
            f"{repeats} zero-length step(s), each a network call that moves nothing, run as the codebase runs them",
            RepeatedIndexWarning, stacklevel=7,  # plan ← grid ← spec.plan ← _prepare_protocol ← _prepare ← sample/validate ← caller
        )
    network_n = [*reversed(seq), -1]
    kw = dict(dtype=torch.float64)
    timesteps = torch.tensor([(n + 1) / n_total for n in network_n], **kw)
    state_times = torch.tensor([(n + offset) / n_total if n + offset > 0 else 0.0 for n in network_n], **kw)
    alpha_bar = torch.cat([torch.ones(1, **kw), torch.exp(2 * schedule.log_alpha_array.to(torch.float64))]).to(device)
    view = CodebaseAlphas(alpha_bar=alpha_bar, offset=offset, N=n_total)
    return CodebasePlan(timesteps.to(dtype=dtype, device=device), state_times.to(dtype=dtype, device=device), view, seq)
