"""ipywidgets wired to the (tested) mask and demo functions. The notebooks call each underlying
function once statically (so a headless run and GitHub show a figure), then build the widget."""
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


def ema_widget(run_fn, taus=(0.0, 0.9, 0.99, 0.999, 1.0), ks=(1, 2)):
    """An EMA-decay slider (and K) that reruns ``run_fn(tau, top_k)`` (e.g. a cached
    ``demos.teacher_dynamics``) and plots its curves next to the tau = 0.99 reference."""
    tau = W.SelectionSlider(options=list(taus), value=taus[len(taus) // 2], description="EMA decay tau")
    k = W.SelectionSlider(options=list(ks), value=ks[-1], description="top K")
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            runs = [run_fn(tau.value, k.value)]
            if tau.value != 0.99:
                runs.append(run_fn(0.99, k.value))
            _show(plot_teacher_dynamics(runs))

    tau.observe(redraw, names="value")
    k.observe(redraw, names="value")
    redraw()
    display(W.VBox([W.HBox([tau, k]), out]))
