"""Small interactive helpers for notebooks 01 and 08 (ipywidgets + matplotlib).

Every widget has a static twin (a plain plotting function) so that a notebook read without a
live kernel -- on GitHub, or as HTML -- still shows what the widget would.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import torch

from kd_lib.losses import check_temperature, softmax_t

__all__ = ["format_search_results", "plot_temperature", "search_explorer", "temperature_explorer"]


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

    Taught in notebook 01, section 4 (Dark knowledge in a real teacher).
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

    Taught in notebook 01, section 4 (Dark knowledge in a real teacher).
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


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_search_results(query: str, results: dict[str, list[tuple[float, str]]], width: int = 44) -> str:
    """Plain-text table of several models' search results side by side (the static twin of
    :func:`search_explorer`).

    Args:
        query: the query, printed as the title.
        results: ``{model name: [(cosine, text), ...]}``, best first, the same length for every model.
        width: characters per column (texts are cut with "…").

    Returns:
        One line per rank: ``rank | score text | score text | ...``.

    Taught in notebook 08, section 8 (Try it: a search box).
    """
    if not results:
        raise ValueError("results is empty: give at least one model's results")
    lengths = {len(r) for r in results.values()}
    if len(lengths) != 1:
        raise ValueError(f"every model must return the same number of results; got {sorted(lengths)}")
    if width < 12:
        raise ValueError(f"width must be >= 12 characters; got {width}")
    lines = [f"query: {query}", "   " + " | ".join(f"{name:<{width}}" for name in results)]
    for rank in range(lengths.pop()):
        cells = [f"{score:.3f} {_clip(text, width - 6):<{width - 6}}"
                 for score, text in (r[rank] for r in results.values())]
        lines.append(f"{rank + 1:>2} " + " | ".join(cells))
    return "\n".join(line.rstrip() for line in lines)


def search_explorer(
    encoders: dict[str, Callable[[list[str]], torch.Tensor]],
    corpora: dict[str, torch.Tensor],
    texts: Sequence[str],
    query: str = "",
    k: int = 5,
    width: int = 44,
):
    """A search box over ``texts``: each model's top ``k`` results, side by side.

    Args:
        encoders: ``{model name: function embedding a list of queries -> [n, D]}``.
        corpora: ``{model name: [N, D] embeddings of texts by that model}`` (the same names).
        texts: the ``N`` documents.
        query: the initial query.
        k: results per model.
        width: characters per column.

    Returns:
        An ``ipywidgets.VBox`` of the text box (searching on Enter) and the results (an ``HTML``
        widget showing :func:`format_search_results` as preformatted text).

    Taught in notebook 08, section 8 (Try it: a search box).
    """
    import ipywidgets as widgets

    from kd_lib.search import search

    if set(encoders) != set(corpora):
        raise ValueError(
            f"encoders and corpora must name the same models; got {sorted(encoders)} and {sorted(corpora)}"
        )
    box = widgets.Text(value=query, description="query", continuous_update=False,
                       layout=widgets.Layout(width="60%"))
    out = widgets.HTML()

    def show(_=None) -> None:
        if not box.value.strip():
            out.value = ""
            return
        results = {name: search(encode([box.value])[0], corpora[name], texts, k) for name, encode in encoders.items()}
        out.value = f"<pre>{html.escape(format_search_results(box.value, results, width))}</pre>"

    box.observe(show, names="value")
    show()
    return widgets.VBox([box, out])
