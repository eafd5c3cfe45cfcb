"""The Booster: one call that turns a (lazy) model and its training objects into distributed ones.

Example::

    import dormant
    from dormant import LazyInitContext
    from dormant.booster import Booster
    from dormant.booster.plugin import TorchFSDPPlugin

    dormant.launch(seed=0)
    booster = Booster(plugin=TorchFSDPPlugin())
    with LazyInitContext():
        model = build_model()
    model, optimizer, *_ = booster.boost(model, optimizer)
"""

from .booster import Booster

__all__ = ["Booster"]
