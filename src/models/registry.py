"""Name -> builder registry for every model of the paper (spec §6).

A model is added with one decorated function::

    @register_model("lenet5", input_shape=(1, 28, 28), default_num_classes=10, is_conv=True)
    def lenet5(num_classes: int) -> nn.Module: ...

Builders take ``num_classes`` as a required keyword plus any model-specific keywords;
:func:`build_model` fills ``num_classes`` from the model's :class:`ModelInfo` when omitted.
Every model returns logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..registry import Registry

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the trainer needs to know about a model before building it.

    input_shape: per-sample input shape the model is built for by default,
        ``(C, H, W)`` for images or ``(features,)`` for tabular data.
    default_num_classes: output width used when ``build_model`` gets no ``num_classes``
        (1 for a binary model that returns a single logit).
    is_conv: the model has convolutions, so it benefits from ``torch.channels_last``.
    """

    input_shape: tuple[int, ...]
    default_num_classes: int
    is_conv: bool


class RegisteredBuilder(Protocol):
    """A builder once registered: it carries its :class:`ModelInfo` as ``info``."""

    info: ModelInfo

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module: ...


MODELS = Registry("model")  # name -> builder; its ModelInfo is the builder's `info`


def register_model(
    name: str, *, input_shape: tuple[int, ...], default_num_classes: int, is_conv: bool
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` together with its :class:`ModelInfo`."""

    def decorator(builder: Builder) -> Builder:
        MODELS.register(name, builder)
        # A function takes attributes, which its Callable type cannot express.
        cast(RegisteredBuilder, builder).info = ModelInfo(tuple(input_shape), default_num_classes, is_conv)
        return builder

    return decorator


def model_info(name: str) -> ModelInfo:
    """Metadata of the registered model ``name``; ``ValueError`` for an unknown name."""
    return MODELS.get(name).info


def build_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with freshly initialised weights.

    ``num_classes`` defaults to the model's ``default_num_classes``; ``kwargs`` go to the
    builder unchanged (an unexpected keyword raises ``TypeError``).
    """
    builder = MODELS.get(name)
    if num_classes is None:
        num_classes = builder.info.default_num_classes
    return builder(num_classes=num_classes, **kwargs)


def output_shape(name: str, input_shape: tuple[int, ...], num_classes: int | None = None, **kwargs) -> tuple[int, ...]:
    """Per-sample output shape of model ``name`` on inputs of ``input_shape``, from a forward
    pass on the meta device (shapes only: no memory, no arithmetic, no random draws).
    Raises ``RuntimeError`` (torch's own message) when the input does not fit the model."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(name, num_classes, **kwargs).eval()
        return tuple(model(torch.empty(2, *input_shape)).shape[1:])
