"""Trivial trainers for the overhead benchmarks (hpo's train(config, report) shape)."""

REPORTS = 500


def train(config, report):
    report(1, {"score": float(config["x"])})
    return {"score": float(config["x"])}


def reports(config, report):
    """No work at all, REPORTS reports: the trial's trainer time is hpo's cost of `report()`."""
    for step in range(1, REPORTS + 1):
        report(step, {"score": float(config["x"]), "loss": 1.0 / step})
    return {"score": float(config["x"])}
