"""A site's box habit against what its private box head learnt, side by side, at the site.

The habit (``BoxConfig``: margin + per-side bias, the jitter averaging out) moves each side of
a drawn box outwards by a fraction of the mask's box; the private ``box`` head (4 parameters,
``baps_fed/method/box_refiner.py``) moves each side of the drawn box inwards by a fraction of
the drawn box. Both are reported here as fractions of the drawn box's size, so a head that has
learnt to undo the habit shows the same number on each side ("top: draws 0.14 out, head moves
0.12 in"). For a benchmark's table or the site's own terminal: none of it is ever sent.
"""

from __future__ import annotations

import numpy as np

from baps_fed.data.boxes import BOX_SIDES, BoxConfig

_OPPOSITE = (2, 3, 0, 1)  # left-right, top-bottom: the sides that share a size


def head_moves(private: np.ndarray) -> dict[str, float]:
    """A private box head's moves, per side: fractions of the drawn box's size (its width for
    left/right, its height for top/bottom), positive = inwards (the box refiner's sign)."""
    p = np.asarray(private, np.float64).reshape(-1)
    if p.size != len(BOX_SIDES):
        raise ValueError(
            f"a private box head has one move per side ({len(BOX_SIDES)}), got {p.size} values"
        )
    return dict(zip(BOX_SIDES, p.tolist(), strict=True))


def habit_moves(box: BoxConfig) -> dict[str, float]:
    """A loose-box habit's mean move, per side: fractions of the drawn box's size, positive =
    outwards; the head's inward move that would undo it on average (sizes are the mask's box
    grown by both its sides' moves; the clipping at the image's edge is left out; nan where a
    habit collapses the box)."""
    if box.protocol != "loose":
        raise ValueError("a box habit is a loose-box one: tight boxes move by pixels, not habit")
    out = [box.loose_margin + b for b in box.loose_bias]  # fractions of the mask's box
    moves = {}
    for i, side in enumerate(BOX_SIDES):
        drawn = 1 + out[i] + out[_OPPOSITE[i]]  # the drawn box's size, in the mask box's
        moves[side] = out[i] / drawn if drawn > 0 else float("nan")
    return moves


def habit_report(box: BoxConfig, private: np.ndarray) -> str:
    """One line: each side's habit and the head's learnt move, in fractions of the drawn box,
    e.g. "left: draws 0.08 out, head 0.06 in; top: draws 0.23 out, head 0.17 in; ..."."""
    habit, head = habit_moves(box), head_moves(private)
    return "; ".join(
        f"{side}: draws {_signed(habit[side], 'out', 'in')}, "
        f"head {_signed(head[side], 'in', 'out')}"
        for side in BOX_SIDES
    )


def _signed(value: float, positive: str, negative: str) -> str:
    return f"{abs(value):.2f} {positive if value >= 0 else negative}"
