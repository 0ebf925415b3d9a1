"""ipywidgets wired to the (tested) mask and demo functions. A static view of a notebook (GitHub,
nbconvert) must show a figure: the notebooks call ``draw_masks`` once before the masking widget, and
the EMA widget draws its default figure as an ordinary output that slider moves update in place."""
from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display

from d2v_lab.model.masking import start_prob

from .demos import draw_masks
from .plots import plot_teacher_dynamics


def _show(fig) -> None:
    """Display a figure inside the current Output widget and close it, so pyplot does not draw it
    a second time at the end of the cell (plt.show takes no figure argument)."""
    display(fig)
    plt.close(fig)


def masking_widget(samples: dict):
    """Sliders for the mask ratio, block size, span length and text ratio; the figure redraws."""
    kind = W.Dropdown(options=["block", "inverse_block", "random"], value="block", description="image mask")
    ratio = W.FloatSlider(value=0.6, min=0.05, max=0.95, step=0.05, description="mask ratio")
    block = W.IntSlider(value=3, min=1, max=6, description="block size")
    span = W.IntSlider(value=10, min=1, max=25, description="span (tokens)")
    text_ratio = W.FloatSlider(value=0.15, min=0.05, max=0.9, step=0.05, description="text ratio")
    seed = W.IntSlider(value=0, min=0, max=20, description="seed")
    note = W.HTML()
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            fig, masks = draw_masks(samples, kind.value, ratio.value, block.value, span.value, text_ratio.value,
                                    seed.value)
            _show(fig)
        note.value = (f"asked {ratio.value:.0%}; achieved: image {masks['image'].float().mean():.1%}, audio "
                      f"{masks['audio'].float().mean():.1%}; text {masks['text'][1:].float().mean():.1%} of "
                      f"{len(masks['text']) - 1} tokens. In wav2vec's terms this audio ratio is a span start "
                      f"probability p = 1 - (1 - ratio)^(1/L) = {start_prob(ratio.value, span.value):.3f}")

    for w in (kind, ratio, block, span, text_ratio, seed):
        w.observe(redraw, names="value")
    redraw()
    display(W.VBox([W.HBox([kind, ratio, block]), W.HBox([span, text_ratio, seed]), note, out]))


def ema_widget(run_fn, taus=(0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0), ks=(1, 2), value: float = 0.98,
               reference=(0.0, 1.0)):
    """An EMA-decay slider (and K) for ``run_fn(tau, top_k)`` (e.g. a cached ``demos.teacher_dynamics``):
    ``plots.plot_teacher_dynamics`` of the chosen tau next to the ``reference`` taus (same K), and a
    line with the chosen run's readouts.

    The figure is an ordinary output, drawn once at the default values, so a static view of the
    notebook (GitHub, nbconvert) shows it; a slider move redraws that same output in place (an IPython
    display handle), instead of adding a second figure below the first."""
    tau = W.SelectionSlider(options=list(taus), value=value, description="EMA decay tau")
    k = W.SelectionSlider(options=list(ks), value=ks[-1], description="top K")
    note = W.HTML()

    def draw():
        chosen = run_fn(tau.value, k.value)
        runs = sorted([run_fn(t, k.value) for t in reference if t != tau.value] + [chosen], key=lambda r: r["tau"])
        note.value = _ema_readout(chosen)
        return plot_teacher_dynamics(runs)

    def redraw(*_):
        note.value = f"running tau={tau.value:g}, K={k.value} ..."
        fig = draw()
        handle.update(fig)
        plt.close(fig)

    display(W.VBox([W.HBox([tau, k]), note]))
    fig = draw()
    handle = display(fig, display_id=True)
    plt.close(fig)
    tau.observe(redraw, names="value")
    k.observe(redraw, names="value")


def _ema_readout(run: dict) -> str:
    knn = f"; k-NN of the teacher's features {100 * run['knn_teacher']:.1f}%" if "knn_teacher" in run else ""
    return (f"tau={run['tau']:g}, K={run['top_k']} after {run['step'][-1]} updates: the teacher is "
            f"{run['teacher_distance'][-1]:.3f} from its initial weights (the student "
            f"{run['student_distance'][-1]:.3f}); loss over the last 10 updates "
            f"{sum(run['loss'][-10:]) / len(run['loss'][-10:]):.3f}{knn}")
