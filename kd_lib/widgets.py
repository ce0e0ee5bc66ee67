"""Small interactive helpers for the notebooks (ipywidgets + matplotlib).

Every widget has a static twin (a plain plotting function) so that a notebook read without a
live kernel -- on GitHub, or as HTML -- still shows what the widget would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kd_lib.losses import check_temperature, softmax_t

__all__ = ["plot_temperature", "temperature_explorer"]


def _as_logits(logits) -> torch.Tensor:
    z = torch.as_tensor(logits, dtype=torch.float64)
    if z.dim() != 1 or z.numel() < 2:
        raise ValueError(f"logits must be a 1-D vector of C >= 2 scores; got shape {tuple(z.shape)}")
    return z


def plot_temperature(
    logits,
    labels: Sequence[str],
    temperature: float,
    ax=None,
    colors: Sequence[str] | None = None,
    log_scale: bool = False,
    log_ymin: float | None = None,
):
    """Bar chart of ``softmax(logits / T)``, titled with ``T`` and the entropy (in nats).

    Args:
        logits: ``[C]`` scores (tensor, array or list).
        labels: ``C`` bar labels.
        temperature: ``T > 0``.
        ax: matplotlib Axes to draw on (a new small figure when ``None``).
        colors: optional ``C`` bar colours (e.g. one per group of classes).
        log_scale: logarithmic y axis, where tiny probabilities stay visible.
        log_ymin: lower y limit of the log axis (pass the same value to panels that share an
            axis); default a third of the smallest probability, but at least ``1e-12``.

    Returns:
        The Axes.
    """
    import matplotlib.pyplot as plt

    z = _as_logits(logits)
    temperature = check_temperature(temperature)
    if len(labels) != z.numel():
        raise ValueError(f"got {len(labels)} labels for {z.numel()} logits")
    p = softmax_t(z, temperature)
    entropy = float(-(p * torch.log_softmax(z / temperature, dim=-1)).sum())
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3), dpi=90)
    ax.bar(range(z.numel()), p.numpy(), color=list(colors) if colors is not None else None)
    ax.set_xticks(range(z.numel()), labels, rotation=60, ha="right", fontsize=8)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(log_ymin if log_ymin is not None else max(float(p.min()) / 3, 1e-12), 1.5)
    else:
        ax.set_ylim(0, 1)
    ax.set_title(f"T = {temperature:g}   H = {entropy:.2f} / {math.log(z.numel()):.2f} nats", fontsize=9)
    return ax


def temperature_explorer(
    logits,
    labels: Sequence[str],
    temperature: float = 1.0,
    t_range: tuple[float, float] = (0.1, 100.0),
    colors: Sequence[str] | None = None,
):
    """A slider over ``T`` (log scale) and a log-axis checkbox, redrawing :func:`plot_temperature`.

    Args:
        logits: ``[C]`` scores.
        labels: ``C`` bar labels.
        temperature: initial ``T``.
        t_range: ``(T_min, T_max)`` of the slider, both ``> 0``.
        colors: optional ``C`` bar colours.

    Returns:
        An ``ipywidgets.interactive`` (display it, or leave it as a cell's last expression).
        Its ``children`` are the ``T`` slider, the checkbox and the output area.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    z = _as_logits(logits)
    lo, hi = (check_temperature(t, "t_range") for t in t_range)
    temperature = check_temperature(temperature)
    if not lo <= temperature <= hi:
        raise ValueError(f"temperature {temperature} is outside t_range {t_range}")
    if len(labels) != z.numel():
        raise ValueError(f"got {len(labels)} labels for {z.numel()} logits")

    def draw(T: float, log_scale: bool) -> None:
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
        plot_temperature(z, labels, T, ax=ax, colors=colors, log_scale=log_scale)
        fig.tight_layout()
        plt.show()

    slider = widgets.FloatLogSlider(
        value=temperature,
        base=10,
        min=math.log10(lo),
        max=math.log10(hi),
        step=0.01,
        description="T",
        continuous_update=False,
        readout_format=".3g",
    )
    checkbox = widgets.Checkbox(value=False, description="log y axis")
    return widgets.interactive(draw, T=slider, log_scale=checkbox)
