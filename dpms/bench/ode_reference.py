"""`ode_error`: the distance of each sample from the same model's converged ODE solution from the same x_T.

FD on an imperfect model rewards some solver errors; the error against the model's own probability-flow
ODE solution is the one number a solver controls. For every t_end of the benchmark's cells, a reference
solution of the first `num` samples (the same x_T and labels as every cell draws for them: `Target`) is
computed once with a high-NFE `reference` method and checked against a second, independent `check` method
on the first `check.num` of them: the run stops with a one-line error, before any cell, when their mean L2
distance exceeds `tol` (default 1e-3·√D: an RMS of 1e-3 per coordinate, an eighth of an 8-bit level on
[−1, 1]). A cell's `ode_error` is the mean over those samples of ‖x_i − x_ref,i‖₂, with its spread and a
description of the reference (`record_fields`).

    ode_error: true                                    # the defaults below
    ode_error:
      num: 200                                         # samples measured: the first num of each cell
      reference: {solver: dpm3m, nfe: 500}             # a registered deterministic solver at an NFE, or
      check: {solver: dpm2m, nfe: 250, num: 50}        #   {solver: dop853, rtol: 1e-10} (scipy, float64)
      tol: 0.008                                       # largest mean L2 between reference and check

Defaults. Networks: dpm3m at NFE 500 checked by dpm2m at NFE 250 on 50 samples, `num` = the config's num
up to 1000. The check is a lower-order method on another grid, so the agreement is about the check's own
error, an upper bound for the reference's: two methods on the same grid agree far better than either is
accurate when ε is rough in t (a network trained at N discrete times). On the shipped digits model dpm3m@500
and dpm2m@500 agree to 1.7e-4 while dpm3m@300 and @500 differ by 3.6e-3; dpm2m@200 is 2.0e-3 from dpm3m@500. The exact model (`gmm`): its exact solution — scipy DOP853 at rtol = atol = 1e-10 in float64
(`dpms.sampler.ode_reference`, the same solution the solver tests converge to) — checked by dpm3m at NFE
1000 on 50 samples, over all the config's samples (it is cheap).

The reference is cached in OUT/ode_reference/<key>.pt (written atomically, read with weights_only), keyed by
what changes it: the dpms version and numerics fingerprint, the model's identity, seed, t_end, num and both
methods. The file holds the check's solutions too, so a loaded reference passes the same convergence check
as a new one. What is compared is the solution at the cell's t_end: a cell that ends elsewhere (the
denoise_to_zero option, a codebase protocol's own last step) carries that difference in its ode_error.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import sampler
from ..atomic import atomic_write
from ..errors import DpmsError, NonFiniteError
from ..sampler.registry import get_solver
from ..version import __version__

ODE_KEYS = {"num", "reference", "check", "tol"}
METHOD_KEYS = {"solver", "nfe", "rtol", "num"}
ADAPTIVE_METHOD = "dop853"  # sampler.ode_reference: scipy DOP853 in λ, float64
TOL_PER_COORDINATE = 1e-3
NETWORK_NUM = 1000  # default samples measured on a network (the exact model: all of them)
CHECK_NUM = 50
FOLDER = "ode_reference"


@dataclass(frozen=True)
class Method:
    """How a reference is solved: a registered deterministic solver at `nfe`, or DOP853 at `rtol`."""

    solver: str
    nfe: int | None = None
    rtol: float | None = None

    def __str__(self) -> str:
        return f"{self.solver} rtol {self.rtol:g}" if self.solver == ADAPTIVE_METHOD else f"{self.solver} NFE {self.nfe}"

    def to_data(self) -> dict:
        return {"solver": self.solver, "rtol": self.rtol} if self.solver == ADAPTIVE_METHOD else {"solver": self.solver, "nfe": self.nfe}

    def solve(self, target, idx: list[int], seed: int, device, t_end: float) -> torch.Tensor:
        """Samples `idx` of `target` (the x_T and labels every cell draws for them) solved to t_end."""
        if self.solver != ADAPTIVE_METHOD:
            return target.draw(idx, seed, device, self.solver, self.nfe, t_end=t_end).x
        x_T = target.initial_noise(idx, seed, device)
        noise_fn = target.make_noise_fn(target.labels(idx, seed, device))
        return sampler.ode_reference(noise_fn, target.schedule, x_T, t_end=t_end, rtol=self.rtol, atol=self.rtol)


@dataclass(frozen=True)
class OdeErrorSpec:
    """A resolved `ode_error` setting (`resolve` fills the defaults for the model)."""

    num: int
    reference: Method
    check: Method
    check_num: int
    tol: float

    def key_data(self) -> dict:
        """What changes the reference and hence every cell's ode_error (tol only judges it: not keyed)."""
        return {"num": self.num, "reference": self.reference.to_data(), "check": self.check.to_data(), "check_num": self.check_num}


# ------------------------------------------------------------------------------------ settings
def parse_ode_error(value, fail) -> dict | None:
    """The config's `ode_error` (false / true / a mapping) as checked plain data; None when off.

    `fail(message)` raises the config reader's one-line error. Which solvers exist and which NFE they can
    run is checked later, against the model's schedule (`resolve`).
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        fail(f"ode_error must be true, false or a mapping with keys {', '.join(sorted(ODE_KEYS))}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in ODE_KEYS)
    if unknown:
        fail(f"unknown key {unknown[0]!r} in ode_error; valid keys: {', '.join(sorted(ODE_KEYS))}")
    out = {}
    if "num" in value:
        out["num"] = _positive_int(value["num"], "ode_error.num", fail)
    if "tol" in value:
        tol = value["tol"]
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
            fail(f"ode_error.tol must be a positive number (mean L2 between reference and check), got {tol!r}")
        out["tol"] = float(tol)
    for section in ("reference", "check"):
        if section in value:
            out[section] = _method_data(value[section], f"ode_error.{section}", section == "check", fail)
    return out


def _positive_int(value, key: str, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(f"{key} must be an integer ≥ 1, got {value!r}")
    return value


def _method_data(raw, key: str, allow_num: bool, fail) -> dict:
    allowed = METHOD_KEYS if allow_num else METHOD_KEYS - {"num"}
    if not isinstance(raw, dict) or not isinstance(raw.get("solver"), str):
        fail(f"{key} must be a mapping with a solver (and nfe, or rtol for {ADAPTIVE_METHOD}), got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        fail(f"unknown key {unknown[0]!r} in {key}; valid keys: {', '.join(sorted(allowed))}")
    out = {"solver": raw["solver"]}
    if raw["solver"] == ADAPTIVE_METHOD:
        if "nfe" in raw:
            fail(f"{key}: {ADAPTIVE_METHOD} chooses its own steps; give rtol instead of nfe")
        rtol = raw.get("rtol", 1e-10)
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
            fail(f"{key}.rtol must lie in (0, 1), got {rtol!r}")
        out["rtol"] = float(rtol)
    else:
        if "rtol" in raw:
            fail(f"{key}: rtol is for solver {ADAPTIVE_METHOD}; a fixed-NFE solver takes nfe")
        if "nfe" not in raw:
            fail(f"{key} needs an nfe for solver {raw['solver']!r}")
        out["nfe"] = _positive_int(raw["nfe"], f"{key}.nfe", fail)
    if "num" in raw:
        out["num"] = _positive_int(raw["num"], f"{key}.num", fail)
    return out


def defaults(exact_model: bool) -> dict:
    if exact_model:
        return {"reference": {"solver": ADAPTIVE_METHOD, "rtol": 1e-10}, "check": {"solver": "dpm3m", "nfe": 1000}}
    return {"reference": {"solver": "dpm3m", "nfe": 500}, "check": {"solver": "dpm2m", "nfe": 250}}


def resolve(data: dict, num: int, dim: int, exact_model: bool, schedule, t_ends, where: str) -> OdeErrorSpec:
    """Fill the defaults for this model, and check both methods against the schedule at every t_end."""
    base = defaults(exact_model)
    measured = min(data.get("num", num if exact_model else min(num, NETWORK_NUM)), num)
    methods = {}
    for section in ("reference", "check"):
        raw = data.get(section, base[section])
        method = Method(raw["solver"], raw.get("nfe"), raw.get("rtol"))
        if method.solver != ADAPTIVE_METHOD:
            try:
                spec = get_solver(method.solver)
                if spec.adaptive or spec.stochastic:
                    raise DpmsError(f"it needs a deterministic fixed-NFE solver or {ADAPTIVE_METHOD}, but {method.solver!r} is "
                                    f"{'adaptive' if spec.adaptive else 'stochastic'}")
                for t_end in t_ends:
                    sampler.validate(method.solver, schedule, nfe=method.nfe, t_end=t_end)
            except DpmsError as e:
                raise DpmsError(f"{where}: ode_error.{section}: {e}") from None
        methods[section] = method
    if methods["reference"] == methods["check"]:
        raise DpmsError(f"{where}: ode_error.check repeats the reference ({methods['reference']}); a check needs another solver or NFE")
    check_num = min(data.get("check", {}).get("num", CHECK_NUM), measured)
    tol = data.get("tol", TOL_PER_COORDINATE * math.sqrt(dim))
    return OdeErrorSpec(measured, methods["reference"], methods["check"], check_num, tol)


# ------------------------------------------------------------------------------------ the reference
@dataclass
class Reference:
    """Converged solutions of samples 0..num−1 at one t_end (float64, CPU) and their check's agreement."""

    key: str
    x: torch.Tensor
    agreement: float  # mean L2 between reference and check on the first check_num samples


def reference_key(spec: OdeErrorSpec, numerics: str, model_identity: dict, seed: int, t_end: float, dtype) -> str:
    settings = {"dpms": __version__, "numerics": numerics, "model": model_identity, "seed": seed, "t_end": t_end,
                "dtype": str(dtype), **spec.key_data()}
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return f"t_end{t_end:g}-{hashlib.sha256(blob).hexdigest()[:16]}"


def reference_path(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / FOLDER / f"{key}.pt"


def load_or_compute(target, spec: OdeErrorSpec, key: str, t_end: float, seed: int, batch: int, out_dir: Path, world,
                    console=None) -> Reference:
    """The reference of `key`: read from OUT/ode_reference/ when a valid copy is there, else solved (and
    written atomically). Either way it must pass its convergence check: DpmsError when the check disagrees."""
    path = reference_path(out_dir, key)
    stored = _read(path, key, spec, tuple(target.shape)) if world.is_main else None
    stored = world.broadcast(stored)
    if stored is None:
        stored = _compute(target, spec, key, t_end, seed, batch, world, console)
        if world.is_main:
            atomic_write(path, lambda f: torch.save(stored, f))
    x, check = stored["x"], stored["check"]
    agreement = float((x[: spec.check_num] - check).flatten(1).norm(dim=1).mean())
    if not agreement <= spec.tol:  # NaN fails too
        raise DpmsError(
            f"ode_error reference at t_end {t_end:g} has not converged: {spec.reference} and {spec.check} differ by mean L2 "
            f"{agreement:.3g} > tol {spec.tol:.3g} on {spec.check_num} samples; raise ode_error.reference.nfe (or set ode_error.tol), "
            f"or --no-ode-error (solutions kept in {path})")
    return Reference(key, x, agreement)


def _read(path: Path, key: str, spec: OdeErrorSpec, shape: tuple) -> dict | None:
    """A stored reference of this key and size (None: absent, foreign or damaged: it is solved again)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)  # tensors and strings: allowlisted unpickling
        ok = (stored["key"] == key and tuple(stored["x"].shape) == (spec.num, *shape)
              and tuple(stored["check"].shape) == (spec.check_num, *shape))
    except Exception:  # noqa: BLE001 — any unreadable file is recomputed (writes are atomic, so it was not ours)
        return None
    return stored if ok else None


def _compute(target, spec: OdeErrorSpec, key: str, t_end: float, seed: int, batch: int, world, console) -> dict:
    """Solve the reference and the check for this rank's samples (i ≡ rank mod size), gathered on every rank."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    solved = {}
    with Progress(TextColumn(f"[bold]ode_error reference, t_end {t_end:g}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=console or Console(), disable=not world.is_main) as bar:
        task = bar.add_task("reference", total=spec.num + spec.check_num)
        for name, method, count in (("x", spec.reference, spec.num), ("check", spec.check, spec.check_num)):
            mine = list(range(world.rank, count, world.size))
            pieces = []
            for start in range(0, len(mine), batch):
                idx = mine[start : start + batch]
                try:
                    with torch.inference_mode():
                        x = method.solve(target, idx, seed, world.device, t_end)
                except NonFiniteError as e:
                    raise DpmsError(f"ode_error reference at t_end {t_end:g}: {method} diverged ({e}); choose another "
                                    "ode_error.reference, or --no-ode-error") from None
                pieces.append((idx, x.detach().to("cpu", torch.float64)))
                bar.advance(task, len(idx) * world.size)
            parts = world.gather(pieces)
            solved[name] = world.broadcast(_assemble(parts, count) if world.is_main else None)
    return {"key": key, "x": solved["x"], "check": solved["check"], "reference": str(spec.reference), "check_method": str(spec.check)}


def _assemble(parts: list[list[tuple[list[int], torch.Tensor]]], count: int) -> torch.Tensor:
    pieces = [piece for part in parts for piece in part]
    out = torch.empty((count, *pieces[0][1].shape[1:]), dtype=torch.float64)
    for idx, x in pieces:
        out[torch.tensor(idx)] = x
    return out


# ------------------------------------------------------------------------------------ measuring
def distances(x: torch.Tensor, idx: list[int], reference: Reference) -> torch.Tensor:
    """‖x_k − x_ref,i‖₂ (float64) for the samples i = idx[k] of a batch that the reference covers."""
    rows = [k for k, i in enumerate(idx) if i < reference.x.shape[0]]
    if not rows:
        return torch.zeros(0, dtype=torch.float64)
    mine = x[rows].detach().to("cpu", torch.float64)
    return (mine - reference.x[[idx[k] for k in rows]]).flatten(1).norm(dim=1)


def record_fields(spec: OdeErrorSpec, reference: Reference, err_sum: float, err_sq: float) -> dict:
    """A cell's ode_error (mean over the measured samples), its standard deviation, and how it was measured."""
    mean = err_sum / spec.num
    return {
        "ode_error": mean,
        "ode_error_std": max(err_sq / spec.num - mean**2, 0.0) ** 0.5,
        "ode_reference": {"key": reference.key, "num": spec.num, "method": str(spec.reference), "check": str(spec.check),
                          "check_num": spec.check_num, "agreement": reference.agreement, "tol": spec.tol},
    }


def needs_measuring(record: dict, key: str) -> bool:
    """A finished cell that lacks the ode_error of reference `key` (run without ode_error, or with other
    reference settings); a diverged cell has none to measure."""
    return not record.get("diverged") and (record.get("ode_reference") or {}).get("key") != key
