"""unbackdoor: remove textual backdoors from trained classifiers by unlearning (GA, NPO, RGA).

The Python API (docs/api.md)::

    import unbackdoor as ub

    ps = ub.poison("sst2", attack="badnets", train_size=400, test_size=200)
    model, tok = ub.train_victim(ps, "minilm", epochs=2)
    model, curve = ub.unlearn(model, tok, forget=ps.poisoned, retain=ps.clean, method="rga", base_model="minilm")
    metrics, verdict = ub.evaluate(model, tok, ps)

Methods, attacks and detectors are plug-ins (docs/extending.md).
"""

__version__ = "0.1.0"

# name -> module; loaded on first use, so that `import unbackdoor` stays light (no torch until needed).
_PUBLIC = {
    "poison": "api", "train_victim": "api", "unlearn": "api", "evaluate": "api", "detect": "api",
    "PoisonedSet": "poisoned_set", "load_poisoned_set": "poisoned_set", "save_poisoned_set": "poisoned_set",
    "Detection": "detectors", "Verdict": "verdict",
    "OBJECTIVES": "objectives", "ATTACKS": "attacks", "DETECTORS": "detectors",
    "UnbackdoorError": "errors", "ConfigError": "errors", "DataError": "errors", "ModelError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'unbackdoor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__():
    return sorted(__all__)
