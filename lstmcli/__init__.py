"""lstmcli: train, evaluate, export and serve (Bi)LSTM text classifiers.

    from lstmcli import Predictor
    Predictor.load("runs/imdb").predict(["a wonderful film"])

Names are imported on first use, so `import lstmcli` stays cheap and never imports torch.
"""

__version__ = '0.1.0'
__all__ = ["Prediction", "Predictor", "UserError", "evaluate_run", "export_run", "load_run"]
_HOMES = dict(Prediction="predict", Predictor="predict", UserError="errors", evaluate_run="evaluate",
              export_run="export", load_run="checkpoint")


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'lstmcli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
