"""The spec layer: every W&B distribution, its Optuna translation, nesting, grids, Hyperband, checks.

W&B's own code (the `sweeps` package) is the reference wherever it defines the semantics.
"""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo import spec
from hpo.spec import hyperband
from hpo import distributions as space
from hpo.spec import yamlsafe
from hpo.errors import SpecError, UsageError

optuna.logging.set_verbosity(optuna.logging.WARNING)
QUANTILES = np.linspace(0.0, 1.0, 2001)[1:]  # scipy's randint.ppf(0) is min - 1, a W&B edge quirk


def make(params: dict, **top) -> spec.Spec:
    return spec.from_dict({"method": "random", "parameters": params, **top})


def one(config: dict) -> spec.Param:
    return make({"x": config}).param("x")


def problems(params: dict | None = None, **top) -> list[str]:
    raw = {"method": "random", "parameters": params if params is not None else {"x": {"values": [1]}}, **top}
    with pytest.raises(SpecError) as err:
        spec.from_dict(raw)
    return err.value.problems


def sample(config: dict, n: int = 300, seed: int = 0) -> list:
    """n values of parameter x drawn by Optuna's RandomSampler through hpo.space.suggest."""
    dist = space.to_optuna(one(config))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.suggest(trial, "x", dist))
        study.tell(trial, 0.0)
    return out


def wandb_ppf(config: dict, q=QUANTILES):
    from sweeps.params import HyperParameter

    return np.asarray(HyperParameter("x", config).ppf(q))


# ---------------------------------------------------------------- inference of the distribution


@pytest.mark.parametrize(
    "config, dist",
    [
        ({"value": 3}, "constant"),
        ({"value": 0.5}, "constant"),
        ({"value": "adam"}, "constant"),
        ({"value": True}, "constant"),
        ({"values": [1, 2, 3]}, "categorical"),
        ({"values": ["a", "b"], "probabilities": [0.3, 0.7]}, "categorical_w_probabilities"),
        ({"distribution": "categorical_w_probabilities", "values": [1, 2], "probabilities": [0.5, 0.5]},
         "categorical_w_probabilities"),
        ({"min": 1, "max": 10}, "int_uniform"),
        ({"min": 0.0, "max": 1.0}, "uniform"),
        ({"min": 0, "max": 1.5}, "uniform"),
        ({"distribution": "log_uniform", "min": -9.2, "max": -2.3}, "log_uniform"),
        ({"distribution": "normal"}, "normal"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_inferred_distribution_matches_wandb(config, dist):
    from sweeps.params import HyperParameter

    from hpo.spec.schema import DEFINITIONS

    assert one(config).distribution == dist
    assert HyperParameter("x", config).type == DEFINITIONS[dist]


@pytest.mark.parametrize("value", [7, 0.25, "sgd", True, False, None])
def test_constant_keeps_its_value_and_type(value):
    p = one({"value": value})
    assert p.grid_values() == [value]
    assert space.to_optuna(p) == CategoricalDistribution([value])
    assert all(v == value and type(v) is type(value) for v in sample({"value": value}, n=5))


def test_values_with_mixed_types_are_a_categorical():
    choices = [1, 0.5, "x", True, None]
    assert space.to_optuna(one({"values": choices})) == CategoricalDistribution(choices)
    assert set(map(repr, sample({"values": choices}, n=200))) == set(map(repr, choices))


def test_filled_config_has_wandb_defaults():
    assert one({"distribution": "q_uniform", "min": 0, "max": 4}).config["q"] == 1.0
    p = one({"distribution": "normal"})
    assert (p.config["mu"], p.config["sigma"]) == (0.0, 1.0)
    assert one({"min": 1, "max": 3}).config["distribution"] == "int_uniform"


# ---------------------------------------------------------------- continuous distributions


def test_int_uniform_is_every_integer_in_the_closed_range():
    cfg = {"min": -2, "max": 3}
    assert space.to_optuna(one(cfg)) == IntDistribution(-2, 3)
    got = sample(cfg)
    assert set(got) == set(range(-2, 4)) == set(wandb_ppf(cfg).tolist())
    assert all(type(v) is int for v in got)


def test_int_uniform_with_whole_float_bounds_is_coerced_to_int():
    p = one({"distribution": "int_uniform", "min": 1.0, "max": 4})
    assert p.grid_values() == [1, 2, 3, 4]


def test_uniform():
    cfg = {"min": -1.5, "max": 2.5}
    assert space.to_optuna(one(cfg)) == FloatDistribution(-1.5, 2.5)
    assert all(-1.5 <= v <= 2.5 for v in sample(cfg))


def test_log_uniform_bounds_are_natural_log_exponents():
    cfg = {"distribution": "log_uniform", "min": -9.2, "max": -2.3}
    assert space.to_optuna(one(cfg)) == FloatDistribution(math.exp(-9.2), math.exp(-2.3), log=True)
    ref = wandb_ppf(cfg, np.array([0.0, 0.5, 1.0]))
    assert ref[0] == pytest.approx(math.exp(-9.2)) and ref[-1] == pytest.approx(math.exp(-2.3))
    got = sample(cfg)
    assert all(math.exp(-9.2) <= v <= math.exp(-2.3) for v in got)
    # log-uniform: the log of the draws spreads over the whole exponent range
    logs = np.log(got)
    assert logs.min() < -8.5 and logs.max() > -3.0


@pytest.mark.parametrize("dist", ["log_uniform_values", "inv_log_uniform_values"])
def test_value_forms_are_log_uniform_between_the_values(dist):
    cfg = {"distribution": dist, "min": 1e-4, "max": 1e-1}
    assert space.to_optuna(one(cfg)) == FloatDistribution(1e-4, 1e-1, log=True)
    ref = wandb_ppf(cfg, np.array([0.0, 0.5, 1.0]))
    assert ref.min() == pytest.approx(1e-4) and ref.max() == pytest.approx(1e-1)
    # same law as W&B: the median is the geometric mean of the bounds
    assert float(wandb_ppf(cfg, np.array([0.5]))[0]) == pytest.approx(math.sqrt(1e-4 * 1e-1))
    assert all(1e-4 <= v <= 1e-1 for v in sample(cfg))


def test_inv_log_uniform_takes_exponents_of_one_over_x():
    cfg = {"distribution": "inv_log_uniform", "min": 2.3, "max": 9.2}
    lo, hi = math.exp(-9.2), math.exp(-2.3)
    assert space.to_optuna(one(cfg)) == FloatDistribution(lo, hi, log=True)
    ref = wandb_ppf(cfg, np.array([0.0, 0.5, 1.0]))
    assert ref.min() == pytest.approx(lo) and ref.max() == pytest.approx(hi)
    assert all(lo <= v <= hi for v in sample(cfg))


# ---------------------------------------------------------------- q rounding


@pytest.mark.parametrize(
    "cfg, support",
    [
        ({"min": 0, "max": 10, "q": 2}, [0, 2, 4, 6, 8, 10]),
        ({"min": 16, "max": 128, "q": 16}, [16, 32, 48, 64, 80, 96, 112, 128]),
        ({"min": 0.0, "max": 1.0, "q": 0.25}, [0.0, 0.25, 0.5, 0.75, 1.0]),
        ({"min": 0.1, "max": 0.5, "q": 0.1}, [0.1, 0.2, 0.3, 0.4, 0.5]),
        ({"min": 0, "max": 3}, [0.0, 1.0, 2.0, 3.0]),  # W&B's default q is 1.0: floats
    ],
    ids=["int-q", "int-q16", "float-q", "float-q-0.1", "default-q"],
)
def test_q_uniform_support_is_multiples_of_q_and_matches_wandb(cfg, support):
    cfg = {"distribution": "q_uniform", **cfg}
    p = one(cfg)
    assert p.grid_values() == pytest.approx(support)
    assert p.grid_count() == len(support)
    ref = sorted(set(np.round(wandb_ppf(cfg), 9).tolist()))
    assert ref == pytest.approx(support)  # W&B's ppf over a fine grid of quantiles hits exactly these
    got = sample(cfg, n=400)
    assert {round(v, 9) for v in got} == {round(v, 9) for v in support}
    int_q = isinstance(cfg.get("q", 1.0), int)
    assert all(isinstance(v, int) is int_q for v in got)
    assert all(isinstance(v, int) is int_q for v in p.grid_values())
    assert all(isinstance(v, int) is int_q for v in wandb_ppf(cfg, np.array([0.0, 0.5, 1.0])).tolist())


def test_q_uniform_with_unaligned_bounds_stays_inside_min_max():
    # W&B rounds r/q for r in [1, 10]: it can yield 0, below min. hpo keeps the multiples inside.
    cfg = {"distribution": "q_uniform", "min": 1, "max": 10, "q": 3}
    p = one(cfg)
    assert p.grid_values() == [3, 6, 9]
    assert space.to_optuna(p) == IntDistribution(3, 9, step=3)
    assert set(sample(cfg)) == {3, 6, 9}
    assert set(wandb_ppf(cfg).tolist()) - {0} == {3, 6, 9}


def test_q_uniform_grid_is_the_optuna_support():
    s = spec.from_dict({"method": "grid", "parameters": {
        "x": {"distribution": "q_uniform", "min": 0.05, "max": 0.52, "q": 0.1}}})
    dist = space.to_optuna(s.param("x"))
    assert all(dist._contains(dist.to_internal_repr(v)) for v in s.param("x").grid_values())
    assert s.param("x").grid_values() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


# ---------------------------------------------------------------- what Optuna has no form for

MAPPED_CASES = [
    {"distribution": "normal", "mu": 0, "sigma": 1},
    {"distribution": "q_normal", "mu": 10, "sigma": 2, "q": 1},
    {"distribution": "log_normal", "mu": -3, "sigma": 1},
    {"distribution": "q_log_normal", "mu": 2, "sigma": 1, "q": 2},
    {"distribution": "q_log_uniform", "min": 0, "max": 5, "q": 1},
    {"distribution": "q_log_uniform_values", "min": 1, "max": 256, "q": 1},
    {"distribution": "q_log_uniform_values", "min": 0.001, "max": 1.0, "q": 0.001},
    {"distribution": "beta", "a": 2, "b": 3},
    {"distribution": "q_beta", "a": 2, "b": 3, "q": 0.1},
    {"values": [1, 2, 3], "probabilities": [0.2, 0.3, 0.5]},
]


@pytest.mark.parametrize("cfg", MAPPED_CASES, ids=lambda c: c.get("distribution", "categorical_w_probabilities"))
def test_optuna_samples_every_wandb_distribution_with_wandbs_law(cfg):
    """2,000 Optuna draws (a uniform variable through W&B's ppf) against 2,000 of W&B's own sampler."""
    from scipy import stats

    from sweeps.params import HyperParameter

    s = make({"opt": {"parameters": {"lr": cfg}}})
    assert space.check(s) == [], "the default engine runs it"
    dist = space.optuna_form(s.param("opt.lr"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    ours = []
    for _ in range(2000):
        trial = study.ask()
        ours.append(space.suggest(trial, "opt.lr", dist))
        study.tell(trial, 0.0)
        recorded = study.get_trials(deepcopy=False)[-1].params["opt.lr"]
        assert recorded == ours[-1], "Optuna records the value the trainer got"
    np.random.seed(2)
    theirs = [HyperParameter("x", cfg).sample() for _ in range(2000)]
    if "values" in cfg:  # a weighted choice: the same support, frequencies within a few percent
        assert set(ours) <= set(cfg["values"])
        for v, p in zip(cfg["values"], cfg["probabilities"]):
            assert abs(ours.count(v) / 2000 - p) < 0.04
        return
    support = set(np.round(theirs, 9).tolist())
    if "q" in cfg:  # a lattice: every value on it, and W&B's type (int when q is)
        assert all(abs(v / cfg["q"] - round(v / cfg["q"])) < 1e-6 for v in ours)
        assert all(isinstance(v, int) for v in ours) is isinstance(cfg["q"], int)
    if cfg.get("distribution", "").startswith(("beta", "q_beta")):
        assert all(0 <= v <= 1 for v in ours)
    if "min" in cfg:
        lo, hi = min(support), max(support)
        assert all(lo - cfg.get("q", 0) <= v <= hi + cfg.get("q", 0) or cfg["min"] <= v for v in ours)
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3, "the same law as W&B's sampler"


def test_a_mapped_parameter_is_recorded_beside_its_uniform_variable():
    s = make({"w": {"distribution": "normal", "mu": 5, "sigma": 0.1}})
    study = optuna.create_study()
    trial = study.ask()
    value = space.suggest(trial, "w", space.optuna_form(s.param("w")))
    study.tell(trial, 0.0)
    params = study.trials[0].params
    assert set(params) == {"w", "w~u"} and params["w"] == value and 4 < value < 6


@pytest.mark.parametrize("method", ["random", "grid"])
def test_list_and_mapping_choices_reach_the_trainer_as_written(method):
    """W&B takes `values: [[32, 32], [64]]` and `value: [accuracy]`; Optuna holds them as JSON text."""
    s = make({"w": {"values": [[1, 2], [3]]}, "m": {"value": ["accuracy"]}, "c": {"values": [{"a": 1}, {"a": 2}]}},
             method=method)
    study = optuna.create_study(sampler=space.sampler(s, seed=1))
    dists = space.distributions(s)
    if method == "grid":
        for point in space.encoded_grid(s):
            study.enqueue_trial(point)
    seen = []
    for _ in range(4):
        trial = study.ask()
        got = {name: space.suggest(trial, name, d) for name, d in dists.items()}
        assert got["w"] in ([1, 2], [3]) and got["m"] == ["accuracy"] and got["c"] in ({"a": 1}, {"a": 2})
        assert trial.params == {k: json.dumps(v) for k, v in got.items()}, "Optuna records what the trainer got"
        study.tell(trial, 1.0)
        seen.append((tuple(got["w"]), got["c"]["a"]))
    if method == "grid":
        assert sorted(seen) == [((1, 2), 1), ((1, 2), 2), ((3,), 1), ((3,), 2)], "each grid point once"


# ---------------------------------------------------------------- nesting


NESTED = {
    "opt": {"parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "momentum": {"min": 0.0, "max": 0.99},
        "sched": {"parameters": {"gamma": {"values": [0.1, 0.5]}}},
    }},
    "hidden": {"values": [16, 32]},
}


def test_nested_parameters_flatten_to_dotted_names():
    s = make(NESTED)
    assert [p.name for p in s.params] == ["opt.lr", "opt.momentum", "opt.sched.gamma", "hidden"]
    assert s.param("opt.momentum").distribution == "uniform"
    assert set(space.distributions(s)) == {"opt.lr", "opt.momentum", "opt.sched.gamma", "hidden"}


def test_unflatten_round_trips_to_the_nested_config_wandb_hands_a_run():
    flat = {"opt.lr": 0.01, "opt.momentum": 0.9, "opt.sched.gamma": 0.5, "hidden": 16}
    assert spec.unflatten(flat) == {"opt": {"lr": 0.01, "momentum": 0.9, "sched": {"gamma": 0.5}}, "hidden": 16}
    names = [p.name for p in make(NESTED).params]
    nested = spec.unflatten({n: i for i, n in enumerate(names)})

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    assert dict(leaves(nested)) == {n: i for i, n in enumerate(names)}


def test_dotted_and_nested_names_may_not_collide():
    got = problems({"opt": {"parameters": {"lr": {"values": [1]}}}, "opt.lr": {"values": [2]}})
    assert got == ["parameters.opt.lr: defined twice (once nested, once dotted)"]
    # W&B keeps a literal dotted name a key of its own, beside a parameter named like its prefix
    s = make({"opt": {"values": [1]}, "opt.lr": {"values": [2]}, "a.b.activations.0": {"value": 3}})
    assert s.literal_names == {"opt.lr", "a.b.activations.0"}
    assert spec.unflatten({"opt": 1, "opt.lr": 2, "a.b.activations.0": 3, "m.d": 4}, s.literal_names) == {
        "opt": 1, "opt.lr": 2, "a.b.activations.0": 3, "m": {"d": 4}}


def test_nested_block_problems_name_the_full_path():
    assert problems({"outer": {"parameters": {"inner": {"min": 5, "max": 1}}}}) == [
        "parameters.outer.inner.min: must be less than max (5 >= 1)"]
    assert problems({"outer": {"parameters": {}}}) == ["parameters.outer.parameters: must define at least one parameter"]
    assert problems({"outer": {"parameters": {"a": {"values": [1]}}, "extra": 1}})[0].startswith(
        "parameters.outer.extra: unknown key")


# ---------------------------------------------------------------- grids


def test_grid_points_last_parameter_fastest():
    s = spec.from_dict({"method": "grid", "parameters": {
        "a": {"values": [1, 2]}, "b": {"min": 0, "max": 2}, "c": {"value": "k"},
        "d": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.5}}})
    assert s.grid_size() == 2 * 3 * 1 * 3
    pts = s.grid()
    assert len(pts) == s.grid_size()
    assert pts[0] == {"a": 1, "b": 0, "c": "k", "d": 0.0}
    assert pts[1] == {"a": 1, "b": 0, "c": "k", "d": 0.5}
    assert pts[-1] == {"a": 2, "b": 2, "c": "k", "d": 1.0}
    assert len({tuple(sorted(p.items())) for p in pts}) == len(pts)
    assert isinstance(space.sampler(s), optuna.samplers.GridSampler)


def test_grid_needs_discrete_parameters():
    got = problems({"lr": {"min": 0.0, "max": 1.0}}, method="grid")
    assert got == ["parameters.lr: grid search needs value, values, int_uniform or q_uniform, not uniform"]


@pytest.mark.timeout(60)  # building the grid would run for hours
def test_huge_grid_is_refused_without_building_it():
    got = problems({"a": {"min": 0, "max": 10**12}, "b": {"values": list(range(10))}}, method="grid")
    assert got[0].startswith("parameters: the grid has 10,000,000,000,010 points")


# ---------------------------------------------------------------- Hyperband


def wandb_bands(early_terminate: dict) -> list[int]:
    from sweeps.hyperband_stopping import hyperband_stop_runs
    from sweeps.run import RunState, SweepRun

    run = SweepRun(name="r", state=RunState.running, history=[{"loss": 1.0}] * 3)
    hyperband_stop_runs([run], {"method": "random", "metric": {"name": "loss", "goal": "minimize"},
                                "early_terminate": early_terminate, "parameters": {"a": {"values": [1]}}})
    return run.early_terminate_info["bands"]


@pytest.mark.parametrize(
    "et",
    [
        {"min_iter": 1},
        {"min_iter": 1, "eta": 3},
        {"min_iter": 2, "eta": 2},
        {"min_iter": 3, "eta": 4},
        {"min_iter": 1, "eta": 2.5},
        {"max_iter": 27, "s": 2},
        {"max_iter": 27, "s": 3, "eta": 3},
        {"max_iter": 81, "s": 3, "eta": 3},
        {"max_iter": 100, "s": 4, "eta": 2},
        {"max_iter": 10, "s": 5, "eta": 3},  # W&B stops at the first band below 1
    ],
    ids=lambda et: "-".join(f"{k}{v}" for k, v in et.items()),
)
def test_rungs_are_wandb_bands(et):
    et = {"type": "hyperband", **et}
    s = make({"epochs": {"value": 9}}, metric={"name": "loss"}, early_terminate=et)
    bands = wandb_bands(et)
    if "min_iter" in et:
        assert s.hyperband.rungs(limit=math.inf) == bands  # W&B's 100 bands
        assert s.hyperband.rungs() == [b for b in bands if b <= 1000]
    else:
        assert s.hyperband.rungs() == bands


def test_max_iter_form_without_any_stop_point_is_refused():
    et = {"type": "hyperband", "max_iter": 2, "s": 1, "eta": 3}
    with pytest.raises(ValueError, match="Bands must be"):
        wandb_bands(et)
    got = problems(metric={"name": "loss"}, early_terminate=et)
    assert got[0].startswith("early_terminate: max_iter 2 with eta 3 and s 1 gives no stop points")


@pytest.mark.parametrize(
    "et, epochs, want",
    [
        ({"min_iter": 1, "eta": 3}, 9, (1, 9, 3)),
        ({"min_iter": 2, "eta": 2}, 16, (2, 16, 2)),
        ({"min_iter": 1}, None, (1, "auto", 3)),
        ({"max_iter": 27, "s": 2, "eta": 3}, 9, (3, 27, 3)),
        ({"max_iter": 81, "s": 3, "eta": 3}, None, (3, 81, 3)),
    ],
)
def test_hyperband_maps_to_optuna_hyperband_pruner(et, epochs, want):
    params = {"x": {"values": [1]}} if epochs is None else {"epochs": {"value": epochs}}
    s = make(params, metric={"name": "loss"}, early_terminate={"type": "hyperband", **et})
    pr = space.pruner(s, "hyperband")
    assert isinstance(pr, optuna.pruners.HyperbandPruner)
    assert (pr._min_resource, pr._max_resource, pr._reduction_factor) == want
    assert hyperband.resources(s) == want
    sha = space.pruner(s)  # the default: W&B's one ladder from min_iter by eta
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner)
    assert (sha._min_resource, sha._reduction_factor, sha._min_early_stopping_rate) == (want[0], want[2], 0)


def test_epochs_from_a_categorical_sets_the_max_resource():
    s = make({"epochs": {"values": [5, 20, 10]}}, metric={"name": "loss"},
             early_terminate={"type": "hyperband", "min_iter": 1})
    assert space.pruner(s, "hyperband")._max_resource == 20


@pytest.mark.parametrize(
    "method, cls", [("bayes", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                    ("grid", optuna.samplers.GridSampler)])
def test_sampler_per_method(method, cls):
    s = spec.from_dict({"method": method, "metric": {"name": "loss"}, "parameters": {"x": {"values": [1, 2]}}})
    assert isinstance(space.sampler(s, seed=1), cls)
    assert isinstance(space.pruner(s), optuna.pruners.NopPruner)
    assert s.direction == "minimize"


def test_goal_maximize_sets_direction():
    s = make({"x": {"values": [1]}}, metric={"name": "acc", "goal": "maximize"})
    assert (s.metric, s.direction) == ("acc", "maximize")


# ---------------------------------------------------------------- semantic checks


P = "parameters.x"


@pytest.mark.parametrize(
    "params, top, first",
    [
        ({"x": {"min": 1.0, "max": 0.5}}, {}, f"{P}.min: must be less than max"),
        ({"x": {"min": 3, "max": 3}}, {}, f"{P}.min: must be less than max"),
        ({"x": {"distribution": "log_uniform_values", "min": 0, "max": 1}}, {}, f"{P}.min: must be > 0"),
        ({"x": {"distribution": "inv_log_uniform_values", "min": -1.0, "max": 1.0}}, {}, f"{P}.min: must be > 0"),
        ({"x": {"distribution": "q_log_uniform_values", "min": 0, "max": 8}}, {}, f"{P}.min: must be > 0"),
        ({"x": {"distribution": "int_uniform", "min": 0.5, "max": 4}}, {}, f"{P}.min: 0.5 is not of type 'integer'"),
        ({"x": {"distribution": "int_uniform", "min": 0, "max": 4.5}}, {}, f"{P}.max: 4.5 is not of type 'integer'"),
        ({"x": {"distribution": "q_uniform", "min": 0, "max": 4, "q": 0}}, {}, f"{P}.q: must be > 0"),
        ({"x": {"distribution": "q_uniform", "min": 0, "max": 4, "q": -1}}, {}, f"{P}.q: must be > 0"),
        ({"x": {"distribution": "normal", "sigma": 0}}, {}, f"{P}.sigma: must be > 0"),
        ({"x": {"values": []}}, {}, f"{P}.values: [] should be non-empty"),
        ({"x": {"values": [1, 2], "probabilities": [0.5]}}, {}, f"{P}.probabilities: 1 probabilities for 2 values"),
        ({"x": {"values": [1, 2], "probabilities": [0.5, 0.6]}}, {}, f"{P}.probabilities: must sum to 1"),
        ({"x": {"values": [1, 2], "probabilities": [-0.5, 1.5]}}, {}, f"{P}.probabilities[0]:"),
        ({"x": {"min": 0.0, "max": float("inf")}}, {}, f"{P}: min and max must be finite numbers"),
        ({"x": {"min": True, "max": 5}}, {}, f"{P}.min: must be a number"),
        ({"x": {"min": "1e-4", "max": 1.0}}, {}, f"{P}.min: '1e-4' is text"),
        ({"x": {"min": "abc", "max": 1.0}}, {}, f"{P}.min: must be a number"),
        ({"x": {"min": 0, "max": 1, "q": 2}}, {}, f"{P}.q: unknown key for int_uniform"),
        ({"x": {"distribution": "categorical", "values": [1, 2], "probabilities": [0.5, 0.5]}}, {},
         f"{P}.distribution: categorical takes no probabilities"),
        ({"x": {"distribution": "gaussian"}}, {}, f"{P}.distribution: unknown distribution 'gaussian'"),
        ({"x": {}}, {}, f"{P}: needs value, values, min and max, or a distribution"),
        ({"x": 5}, {}, f"{P}: must be a mapping"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1.5},
                                  "metric": {"name": "m"}}, "early_terminate.eta: must be at least 2"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1},
                                  "metric": {"name": "m"}}, "early_terminate.eta: must be at least 2"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "eta": 3}, "metric": {"name": "m"}},
         "early_terminate: hyperband needs min_iter, or max_iter and s"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "max_iter": 27},
                                  "metric": {"name": "m"}}, "early_terminate: hyperband needs min_iter, or max_iter and s"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "min_iter": 0}, "metric": {"name": "m"}},
         "early_terminate.min_iter: 0 is less than the minimum of 1"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "max_iter": 27, "s": 2.5},
                                  "metric": {"name": "m"}}, "early_terminate.s: must be a whole number"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "min_iter": 9, "max_iter": 3, "s": 1},
                                  "metric": {"name": "m"}}, "early_terminate.min_iter: must be less than max_iter"),
        ({"x": {"values": [1]}}, {"run_cap": 0}, "run_cap: 0 is less than the minimum of 1"),
        ({"x": {"values": [1]}}, {"run_cap": 2.5}, "run_cap: 2.5 is not of type 'integer'"),
        ({"x": {"values": [1]}}, {"method": "bayes"}, "metric.name: required with method bayes"),
        ({"x": {"values": [1]}}, {"early_terminate": {"type": "hyperband", "min_iter": 1}},
         "metric.name: required with early_terminate"),
        ({"x": {"values": [1]}}, {"metric": {"goal": "maximize"}}, "metric.name: required"),
        ({"x": {"values": [1]}}, {"metric": "loss"}, "metric: 'loss' is not of type 'object'"),
        ({"x": {"values": [1]}}, {"method": "custom"}, "method: 'custom' needs W&B's cloud controller"),
        ({"x": {"values": [1]}}, {"method": "smart"}, "method: 'smart' is not one of"),
        ({"x": {"values": [1]}}, {"backend": "ray"}, "backend: unknown key"),
        ({}, {}, "parameters: must define at least one parameter"),
    ],
)
def test_semantic_checks(params, top, first):
    got = problems(params, **top)
    assert got[0].startswith(first), got
    assert all(": " in line and "\n" not in line for line in got)


def test_missing_method_and_parameters():
    with pytest.raises(SpecError) as err:
        spec.from_dict({"name": "x"})
    assert err.value.problems == ["method: required", "parameters: required"]


@pytest.mark.parametrize("name", ["a;rm -rf ~", "$(x)", "a b", "x\n", "-x", "a..b", "a.", "1x"])
def test_parameter_names_must_be_plain(name):
    got = problems({name: {"values": [1]}})
    assert got[0].startswith("parameters.") and "bad parameter name" in got[0]


def test_unquoted_1e4_is_a_number_as_in_yaml_1_2_and_quoted_stays_text():
    raw = yamlsafe.load_text("method: random\nparameters:\n  lr: {values: [1.0e-3, 1e-4, -5E+2]}\n"
                             "  wd: {value: '1e-4'}\n  x: {min: 1e-5, max: 1e-1}\n")
    s = spec.from_dict(raw)
    assert s.param("lr").config["values"] == [1.0e-3, 1.0e-4, -500.0]
    assert s.param("wd").config["value"] == "1e-4"
    assert s.param("x").distribution == "uniform" and s.param("x").config["min"] == 1e-5


def test_a_quoted_number_where_a_number_belongs_is_one_precise_line():
    raw = yamlsafe.load_text("method: random\nparameters:\n  x: {min: '1e-5', max: 1.0e-1}\n")
    with pytest.raises(SpecError) as err:
        spec.from_dict(raw)
    assert err.value.problems == ["parameters.x.min: '1e-5' is text (in quotes); write it without quotes for a number"]


def test_yaml_values_that_are_not_json_are_refused():
    raw = yamlsafe.load_text("method: random\nparameters:\n  day: {value: 2024-01-02}\n")
    with pytest.raises(SpecError, match=r"^parameters\.day\.value: 2024-01-02 is a date"):
        spec.from_dict(raw)


@pytest.mark.timeout(60)  # expanding the bomb would run out of memory or time
def test_yaml_alias_bomb_is_refused_quickly():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    with pytest.raises(SpecError, match="aliases"):
        yamlsafe.load_text("\n".join(lines), label="bomb.yaml")


def test_yaml_ordinary_aliases_and_merges_still_work():
    text = "base: &b {min: 0.0, max: 1.0}\nparameters:\n  x: *b\n  y: {<<: *b, max: 2.0}\n"
    assert yamlsafe.load_text(text)["parameters"] == {"x": {"min": 0.0, "max": 1.0}, "y": {"min": 0.0, "max": 2.0}}
    with pytest.raises(SpecError, match="contains it"):
        yamlsafe.load_text("a: &a [1, *a]")


def test_valid_sweep_round_trip_through_load(tmp_path):
    (tmp_path / "sweep.yaml").write_text(
        "name: t\nmethod: bayes\nmetric: {name: val_loss}\nrun_cap: 5\n"
        "early_terminate: {type: hyperband, min_iter: 1, eta: 2}\n"
        "parameters:\n  lr: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-1}\n"
        "  opt:\n    parameters:\n      name: {values: [sgd, adam]}\n")
    (tmp_path / "space.yaml").write_text("parameters:\n  hidden: {values: [8, 16]}\n")
    s = spec.load(tmp_path / "sweep.yaml")
    assert (s.name, s.method, s.metric, s.run_cap) == ("t", "bayes", "val_loss", 5)
    assert [p.name for p in s.params] == ["lr", "opt.name"]
    assert isinstance(space.sampler(s), optuna.samplers.TPESampler)
    assert [p.name for p in spec.load(tmp_path / "sweep.yaml", tmp_path / "space.yaml").params] == ["hidden"]


def test_a_metric_is_needed_only_where_w_and_b_needs_one(tmp_path, monkeypatch):
    """W&B asks for metric.name only with bayes or hyperband; a random or grid sweep may have none."""
    from hpo import api as sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("method: random\ncommand: [a]\nparameters:\n  x: {values: [1, 2]}\n")
    assert sweep.prepare(sweep.Settings("s.yaml", workers=1)).spec.metric is None
    for top in ({"method": "bayes"}, {"early_terminate": {"type": "hyperband", "min_iter": 1}}):
        with pytest.raises(SpecError) as err:
            make({"x": {"values": [1, 2]}}, **top)
        assert err.value.problems[0].startswith("metric.name: required with")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_keys_of_wandbs_current_schema_are_accepted(tmp_path):
    """W&B Launch keys validate; a Launch job with nothing hpo can run is one line, not a silent default."""
    from hpo import api

    raw = {"method": "random", "metric": {"name": "acc"}, "parameters": {"lr": {"values": [1, 2]}},
           "job": "entity/project/job:v1", "image_uri": "img:latest", "scheduler": {"num_workers": 2}}
    assert spec.from_dict(raw).param("lr")
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError, match=r"^job: a W&B Launch job runs on W&B Launch"):
        api.prepare(api.Settings(tmp_path / "s.yaml", workers=1, root=tmp_path / "runs"))
    plan = api.prepare(api.Settings(tmp_path / "s.yaml", workers=1, root=tmp_path / "runs", trainer="hpo.train:train"))
    assert plan.trainer == "hpo.train:train"
    assert not (tmp_path / "runs").exists()
