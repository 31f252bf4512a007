"""The trivial trainer both sides of the overhead benchmark run (hpo's train(config, report) shape)."""


def train(config, report):
    report(1, {"score": float(config["x"])})
    return {"score": float(config["x"])}
