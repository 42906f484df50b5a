"""Benchmark configs: one YAML file per experiment, checked before any sampling.

A config names the model, the metric, the protocol and the grid of (solver, NFE) cells, and carries the
published number of every cell it reproduces::

    name: dpm_solver_cifar10_continuous
    source: DPM-Solver (Lu et al. 2022), Table 3      # where the numbers come from
    confidence: paper                                   # paper | secondary-high | secondary | secondary-low | none
    model: {preset: scoresde-cifar10-ddpmpp-deep, checkpoint: null}
    features: inception                                 # inception | digits | exact
    reference_stats: stats/fid_stats_cifar10_train.npz  # npz with mu, sigma (not used by `exact`)
    num: 50000
    batch: 500
    seed: 0
    nfe: [10, 12, 15, 20]                               # or `steps: [...]`; neither: adaptive solvers only
    t_end:                                              # a number, or rules tried in order:
      - {max_nfe: 15, value: 1.0e-3}                    #   NFE ≤ 15 → 1e-3
      - {value: 1.0e-4}                                 #   otherwise 1e-4
    solvers:
      - {name: dpm3, skip: logSNR, order_plan: fast, paper: {10: 4.70, 12: 3.75, 15: 3.24, 20: 2.87}}
    ode_error: true                                     # optional: each sample's distance to the model's own
                                                        #   converged ODE solution (dpms.bench.ode_reference)

A solver entry takes `name`, optional `label` (the table row; default the name), `skip`, `t_end`,
`paper` ({column: number}), `confidence`, `note`, `grid` (a tuned time grid: a file of `dpms tune-grid`
or `tune: gits|dmn`, per NFE or for all; see dpms/bench/grids.py), and `nfe` or `steps` (whichever the config uses: the
subset of its columns this entry runs, for a grid that cannot place every column); every other key is a
solver option (`order_plan`,
`rtol`, ...) and is checked against the solver's signature. `solvers: default` is every solver the
registry puts in the default grids (`SolverSpec.default_grid`), in `dpms solvers` order. Relative paths are looked up from the current
folder, then from the folder above the config's (the repository root for configs/*.yaml).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import DpmsError, MissingFileError
from ..evaluation.kinds import FEATURE_KINDS
from ..models.checkpoints import get_preset
from ..sampler.noise import MAX_SAMPLES, MAX_SEED
from ..sampler.registry import default_grid
from .grids import grid_to_data, parse_grid
from .ode_reference import parse_ode_error

CONFIDENCE = ("paper", "secondary-high", "secondary", "secondary-low", "none")  # the reference's labels
TOP_KEYS = {
    "name", "description", "source", "confidence", "notes", "model", "features", "reference_stats",
    "inception_weights", "ode_error", "num", "batch", "adaptive_batch", "seed", "nfe", "steps", "t_end", "skip",
    "solvers", "sample_grid", "out",
}
MODEL_KEYS = {"preset", "checkpoint", "classifier", "guidance_scale", "dtype"}
SOLVER_KEYS = {"name", "label", "skip", "t_end", "paper", "confidence", "note", "nfe", "steps", "grid"}
GRID_KEYS = {"nfe", "count"}
# A Fréchet distance needs a covariance, hence at least 2 samples; sample indices and seeds stay in the
# ranges where the noise streams of `dpms.sampler.noise` are disjoint.
COUNT_LIMITS = {"num": (2, MAX_SAMPLES), "batch": (1, None), "seed": (0, MAX_SEED)}
COUNT_WHY = {"num": " (a covariance needs at least 2 samples)"}
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/digits.yaml"


@dataclass
class TEndRule:
    """`value` applies to cells with NFE ≤ max_nfe (None: every cell the earlier rules left)."""

    value: float
    max_nfe: int | None = None


@dataclass
class SolverEntry:
    name: str
    label: str
    skip: str | None = None
    t_end: list[TEndRule] | None = None  # None: the config's rule
    options: dict = field(default_factory=dict)
    paper: dict[int, float] = field(default_factory=dict)  # column (NFE or steps) → published number
    confidence: str | None = None  # None: the config's
    note: str | None = None
    columns: list[int] | None = None  # the config's columns this entry runs (None: all of them)
    grids: dict = field(default_factory=dict)  # tuned grids: {NFE, or None for every column: a grid file or tune settings}


@dataclass
class ModelSpec:
    preset: str
    checkpoint: str | None = None
    classifier: str | None = None
    guidance_scale: float = 0.0
    dtype: str = "fp32"


@dataclass
class BenchConfig:
    name: str
    model: ModelSpec
    features: str
    solvers: list[SolverEntry]
    columns: list[int]  # NFE values, or step counts when axis == "steps"
    axis: str = "nfe"  # "nfe" | "steps"
    num: int = 1000
    batch: int = 250
    adaptive_batch: int = 250  # samples that share one adaptive step size (see runner)
    seed: int = 0
    t_end: list[TEndRule] | None = None  # None: the schedule's default end time
    skip: str | None = None  # None: each solver's default grid
    reference_stats: str | None = None
    inception_weights: str | None = None
    ode_error: dict | None = None  # None: off; else the checked `ode_error` settings (see bench.ode_reference)
    sample_grid: dict | None = None  # {"nfe": 10, "count": 100}
    out: str | None = None
    description: str = ""
    source: str = ""
    confidence: str = "none"
    notes: str = ""
    path: Path | None = None  # the YAML file it came from

    def to_dict(self) -> dict:
        """The effective config (after flag overrides) as plain data, for results.json."""
        return {
            "name": self.name, "description": self.description, "source": self.source, "confidence": self.confidence,
            "path": str(self.path) if self.path else None, "model": vars(self.model).copy(), "features": self.features,
            "reference_stats": self.reference_stats, "inception_weights": self.inception_weights,
            "ode_error": self.ode_error, "num": self.num, "batch": self.batch, "adaptive_batch": self.adaptive_batch,
            "seed": self.seed, self.axis: list(self.columns), "t_end": _t_end_to_data(self.t_end), "skip": self.skip,
            "solvers": [_solver_to_data(s) for s in self.solvers], "sample_grid": self.sample_grid,
        }


def _t_end_to_data(rules):
    if rules is None:
        return None
    return [{"value": r.value, **({"max_nfe": r.max_nfe} if r.max_nfe is not None else {})} for r in rules]


def _solver_to_data(s: SolverEntry) -> dict:
    out = {"name": s.name, "label": s.label, **s.options}
    for key in ("skip", "confidence", "note"):
        if getattr(s, key) is not None:
            out[key] = getattr(s, key)
    if s.t_end is not None:
        out["t_end"] = _t_end_to_data(s.t_end)
    if s.columns is not None:
        out["columns"] = list(s.columns)
    if s.paper:
        out["paper"] = dict(s.paper)
    if s.grids:
        out["grid"] = grid_to_data(s.grids)
    return out


# ------------------------------------------------------------------------------------- parsing
def count_error(key: str, value, name: str) -> str | None:
    """The complaint about a num, batch or seed outside COUNT_LIMITS (None when it is fine)."""
    low, high = COUNT_LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return f"{name} must be an integer ≥ {low}{COUNT_WHY.get(key, '')}, got {value!r}"
    if high is not None and value > high:
        return f"{name} must be at most {high}, got {value!r}"
    return None


class _Reader:
    """Type checks with messages that name the file and the key."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, message: str):
        raise DpmsError(f"{self.where}: {message}")

    def keys(self, data, allowed: set, section: str) -> None:
        if not isinstance(data, dict):
            self.fail(f"{section} must be a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            self.fail(f"unknown key {unknown[0]!r} in {section}; valid keys: {', '.join(sorted(allowed))}")

    def int_(self, value, key: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(f"{key} must be an integer ≥ {minimum}, got {value!r}")
        return value

    def count(self, value, key: str) -> int:
        error = count_error(key, value, key)
        if error:
            self.fail(error)
        return value

    def float_(self, value, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{key} must be a number, got {value!r}")
        return float(value)

    def int_list(self, value, key: str) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(f"{key} must be a non-empty list of integers, got {value!r}")
        out = [self.int_(v, key) for v in value]
        if len(set(out)) != len(out):
            self.fail(f"{key} lists a value twice: {value}")
        return out

    def t_end(self, value, key: str) -> list[TEndRule] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            return [TEndRule(self._positive(value, key))]
        rules = []
        for k, rule in enumerate(value):
            self.keys(rule, {"value", "max_nfe"}, f"{key}[{k}]")
            if "value" not in rule:
                self.fail(f"{key}[{k}] needs a value")
            max_nfe = None if rule.get("max_nfe") is None else self.int_(rule["max_nfe"], f"{key}[{k}].max_nfe")
            rules.append(TEndRule(self._positive(rule["value"], f"{key}[{k}].value"), max_nfe))
        if not rules or rules[-1].max_nfe is not None:
            self.fail(f"{key}: the last rule must have no max_nfe, so that every NFE gets a t_end")
        return rules

    def _positive(self, value, key: str) -> float:
        v = self.float_(value, key)
        if not 0 < v < 1:
            self.fail(f"{key} must lie in (0, 1), got {value!r}")
        return v

    def paper(self, value, key: str) -> dict[int, float]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(f"{key} must map a column (NFE or steps) to the published number, got {value!r}")
        return {self.int_(k, f"{key} column"): self.float_(v, f"{key}[{k}]") for k, v in value.items()}

    def confidence(self, value, key: str) -> str | None:
        if value is not None and value not in CONFIDENCE:
            self.fail(f"{key} must be one of {', '.join(CONFIDENCE)}, got {value!r}")
        return value


def _solver_entry(raw, k: int, r: _Reader) -> SolverEntry:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        r.fail(f"solvers[{k}] must be a solver name or a mapping with a name, got {raw!r}")
    options = {key: v for key, v in raw.items() if key not in SOLVER_KEYS}
    return SolverEntry(
        name=raw["name"],
        label=str(raw.get("label") or raw["name"]),
        skip=raw.get("skip"),
        t_end=r.t_end(raw.get("t_end"), f"solvers[{k}].t_end"),
        options=options,
        paper=r.paper(raw.get("paper"), f"solvers[{k}].paper"),
        confidence=r.confidence(raw.get("confidence"), f"solvers[{k}].confidence"),
        note=raw.get("note"),
        columns=_entry_columns(raw, k, r),
        grids=parse_grid(raw.get("grid"), f"{r.where}: solvers[{k}].grid"),
    )


def _entry_columns(raw: dict, k: int, r: _Reader) -> list[int] | None:
    if "nfe" in raw and "steps" in raw:
        r.fail(f"solvers[{k}] gives both nfe and steps; give the one the config's columns use")
    key = "nfe" if "nfe" in raw else "steps" if "steps" in raw else None
    return None if key is None else r.int_list(raw[key], f"solvers[{k}].{key}")


def _check_entry_columns(raw_solvers: list, solvers: list[SolverEntry], axis: str, columns: list[int], r: _Reader) -> None:
    """An entry's own column list must use the config's axis and stay inside its columns."""
    for k, (raw, entry) in enumerate(zip(raw_solvers, solvers)):
        if entry.columns is None:
            continue
        if not isinstance(raw, dict) or axis not in raw:
            other = "steps" if axis == "nfe" else "nfe"
            r.fail(f"solvers[{k}] lists columns by {other} but the config's columns are {axis}; rename solvers[{k}].{other} to {axis}")
        extra = [c for c in entry.columns if c not in columns]
        if extra:
            r.fail(f"solvers[{k}].{axis} has {extra}, which the config's {axis} {columns} lacks; add them there or drop them here")
        unshown = [c for c in entry.paper if c not in entry.columns]
        if unshown:
            r.fail(f"solvers[{k}].paper gives columns {unshown} that solvers[{k}].{axis} leaves out; add them there")


def parse_config(data: dict, where: str = "config", path: Path | None = None) -> BenchConfig:
    """Check and convert a config mapping; every mistake is a one-line DpmsError naming `where`."""
    r = _Reader(where)
    r.keys(data, TOP_KEYS, "the top level")
    for required in ("model", "features", "solvers"):
        if required not in data:
            r.fail(f"missing required key {required!r}")
    model = data["model"]
    if isinstance(model, str):
        model = {"preset": model}
    r.keys(model, MODEL_KEYS, "model")
    if not isinstance(model.get("preset"), str):
        r.fail("model needs a preset (see `dpms models`)")
    if data["features"] not in FEATURE_KINDS:
        r.fail(f"features must be one of {', '.join(FEATURE_KINDS)}, got {data['features']!r}")
    if "nfe" in data and "steps" in data:
        r.fail("give one of nfe (a list of NFE) or steps (a list of step counts), not both")
    axis = "steps" if "steps" in data else "nfe"  # neither: only adaptive solvers, which choose their NFE
    solvers_raw = default_grid() if data["solvers"] == "default" else data["solvers"]
    if not isinstance(solvers_raw, list) or not solvers_raw:
        r.fail("solvers must be a non-empty list, or default (the registry's default grid)")
    solvers = [_solver_entry(raw, k, r) for k, raw in enumerate(solvers_raw)]
    labels = [s.label for s in solvers]
    if len(set(labels)) != len(labels):
        dup = next(lab for lab in labels if labels.count(lab) > 1)
        r.fail(f"two solver entries share the label {dup!r}; give one a distinct label")
    grid = data.get("sample_grid")
    if grid is not None:
        r.keys(grid, GRID_KEYS, "sample_grid")
        grid = {"nfe": r.int_(grid.get("nfe", 10), "sample_grid.nfe"), "count": r.int_(grid.get("count", 100), "sample_grid.count")}
    config = BenchConfig(
        name=str(data.get("name") or (path.stem if path else "bench")),
        model=ModelSpec(
            preset=model["preset"],
            checkpoint=model.get("checkpoint"),
            classifier=model.get("classifier"),
            guidance_scale=r.float_(model.get("guidance_scale", 0.0), "model.guidance_scale"),
            dtype=str(model.get("dtype", "fp32")),
        ),
        features=data["features"],
        solvers=solvers,
        columns=r.int_list(data[axis], axis) if axis in data else [],
        axis=axis,
        num=r.count(data.get("num", 1000), "num"),
        batch=r.count(data.get("batch", 250), "batch"),
        adaptive_batch=r.int_(data.get("adaptive_batch", 250), "adaptive_batch"),
        seed=r.count(data.get("seed", 0), "seed"),
        t_end=r.t_end(data.get("t_end"), "t_end"),
        skip=data.get("skip"),
        reference_stats=data.get("reference_stats"),
        inception_weights=data.get("inception_weights"),
        ode_error=parse_ode_error(data.get("ode_error"), r.fail),
        sample_grid=grid,
        out=data.get("out"),
        description=str(data.get("description", "")).strip(),
        source=str(data.get("source", "")).strip(),
        confidence=r.confidence(data.get("confidence", "none"), "confidence"),
        notes=str(data.get("notes", "")).strip(),
        path=path,
    )
    _check_entry_columns(solvers_raw, solvers, axis, config.columns, r)
    _check_distinct_settings(config, r)
    return config


def _entry_settings(entry: SolverEntry, config: BenchConfig) -> str:
    """What an entry's cells are keyed by apart from the NFE and the config-wide settings."""
    t_end = entry.t_end if entry.t_end is not None else config.t_end
    settings = {"name": entry.name, "options": entry.options, "skip": entry.skip or config.skip, "t_end": _t_end_to_data(t_end),
                "grid": grid_to_data(entry.grids)}
    return json.dumps(settings, sort_keys=True, default=str)


def _check_distinct_settings(config: BenchConfig, r: _Reader) -> None:
    """Two entries that differ only in label would compute the same cells under two names (where their
    columns overlap: entries with their own disjoint `nfe:` lists never share a cell)."""
    seen: dict[str, list[tuple[str, set]]] = {}
    for entry in config.solvers:
        columns = set(entry.columns or config.columns)
        for label, other in seen.setdefault(_entry_settings(entry, config), []):
            if columns & other or not (columns or other):
                r.fail(f"solver entries {label!r} and {entry.label!r} have identical settings; remove one or change its settings")
        seen[_entry_settings(entry, config)].append((entry.label, columns))


def load_config(path: str | Path) -> BenchConfig:
    """Read and check a YAML config (a missing file or bad YAML is a one-line error)."""
    path = Path(path)
    if not path.is_file():
        fallback = REPO_ROOT / path
        if path.is_absolute() or not fallback.is_file():
            raise MissingFileError(f"config {path} not found; the shipped configs are in {REPO_ROOT / 'configs'}")
        path = fallback
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DpmsError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    return parse_config(data or {}, where=str(path), path=path)


def candidate_paths(value: str, config: BenchConfig) -> list[Path]:
    """The absolute paths a config or flag path may mean, in lookup order: below the current folder,
    then below the folder above the config's (the repository root for configs/*.yaml)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return [p]
    places = [Path.cwd() / p]
    if config.path is not None:
        places.append(config.path.resolve().parent.parent / p)
    return list(dict.fromkeys(places))  # one entry when the current folder is that folder


def resolve_path(value: str | None, config: BenchConfig) -> Path | None:
    """A path from a config or flag: the first of `candidate_paths` that exists, else as given."""
    if value is None:
        return None
    return next((place for place in candidate_paths(value, config) if place.exists()), Path(value).expanduser())


# ------------------------------------------------------------------------------------ overrides
@dataclass
class Overrides:
    """Command-line flags that replace config settings (None: keep the config's)."""

    model: str | None = None
    checkpoint: str | None = None
    solvers: list[str] | None = None
    nfe: list[int] | None = None
    num: int | None = None
    batch: int | None = None
    seed: int | None = None
    features: str | None = None
    reference_stats: str | None = None
    inception_weights: str | None = None
    ode_error: bool | None = None  # --ode-error / --no-ode-error


def apply_overrides(config: BenchConfig, o: Overrides) -> BenchConfig:
    """The config with flags applied.

    --model replaces the model; its published numbers then no longer apply and are dropped, and the
    exact model gets the exact metric (FD of exact features, plus the error against the exact ODE solution).
    The run is then another experiment: it is named <config name>-<model>, writes to results/<that name>
    unless --out says otherwise (never into the paper config's folder), and its description and notes,
    which describe the config's model and numbers, are replaced.
    --solvers keeps the config's entries with those names or labels, in the order given, and adds a
    default entry for any other solver name. --nfe replaces the columns (and makes them NFE).
    --ode-error turns on the error against the model's converged ODE solution (the config's settings,
    else the defaults of `dpms.bench.ode_reference`); --no-ode-error turns it off.
    """
    c = copy.deepcopy(config)
    if o.model is not None and o.model != c.model.preset:
        c.model = ModelSpec(preset=o.model)
        for s in c.solvers:
            s.paper, s.note = {}, None
        c.source, c.confidence = "", "none"
        c.name, c.out, c.notes = f"{config.name}-{o.model}", None, ""
        c.description = f"The solvers and grid of {config.name} run on model {o.model} (--model); no published numbers apply."
        if get_preset(o.model).kind == "exact":
            c.features, c.reference_stats, c.ode_error = "exact", None, {}  # its exact ODE solution (DOP853)
        elif not FEATURE_KINDS[c.features].images:
            c.features = "inception"
    if o.checkpoint is not None:
        c.model.checkpoint = o.checkpoint
    if o.solvers is not None:
        chosen = []
        for name in o.solvers:
            match = [s for s in c.solvers if name in (s.label, s.name)]
            chosen.extend(match or [SolverEntry(name=name, label=name)])
        c.solvers = list({s.label: s for s in chosen}.values())
    if o.nfe is not None:
        for s in c.solvers:
            s.columns = None  # --nfe is the whole grid
            if c.axis != "nfe":
                s.paper = {}
        c.columns, c.axis = list(o.nfe), "nfe"
    for key in ("num", "batch", "seed"):
        value = getattr(o, key)
        if value is not None:
            error = count_error(key, value, f"--{key}")
            if error:
                raise DpmsError(error)
            setattr(c, key, value)
    if o.features is not None:
        if o.features not in FEATURE_KINDS:
            raise DpmsError(f"--features must be one of {', '.join(FEATURE_KINDS)}, got {o.features!r}")
        c.features = o.features
    for key in ("reference_stats", "inception_weights"):
        if getattr(o, key) is not None:
            setattr(c, key, getattr(o, key))
    if o.ode_error is not None:
        c.ode_error = (c.ode_error if c.ode_error is not None else {}) if o.ode_error else None
    return c
