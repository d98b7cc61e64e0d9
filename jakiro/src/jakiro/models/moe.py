"""The two MoE feed-forward blocks of the repository: Jakiro (4-logit router, MoE + contrastive branch) and
Jakiro* (2-logit router, per-expert outputs).

Jakiro (official ``jakiro/model/cnets.py``: ``MixtralSparseMoeBlock`` / ``_train``). For one token
vector ``u`` and router logits ``r = W_g u`` (4 logits, no bias)::

    (w0, w1) = softmax(r0, r1)          y0 = E_0(u), y1 = E_1(u)   (SwiGLU experts, intermediate size = H)
    (v0, v1) = softmax(r2, r3)
    m_moe = w0 y0 + w1 y1               -- every step: a dense soft mixture ("top-2 of 2")
    m_con = s (v0 y0 - v1 y1), s = +1 if r2 > r3 else -1
          = (weight of the preferred expert)(its output) - (weight of the other)(its output)

The official code has one class for inference (returns ``m_moe``, or ``[m_moe, m_con]`` stacked on the
penultimate draft step) and one for training (always the stack). Both have the same parameters; here one class
covers both through ``branches`` so the state dicts are interchangeable by construction.

Jakiro* (official ``jakiro_star/model/cnets.py``): two GELU MLP experts (H -> intermediate -> H,
intermediate = the target's ``intermediate_size``) and a 2-logit router. Training uses the weighted mixture
``w_win y_win + w_lose y_lose`` (= ``w0 y0 + w1 y1``); inference keeps the *unweighted* outputs of the preferred
and the other expert separately, ``[y_win, y_lose]``. That train/inference scale mismatch is the official
behaviour and is kept (it is what the released heads were trained and evaluated with).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Branches = Literal["moe", "both"]


class SwiGLUExpert(nn.Module):
    """``down(silu(gate(u)) * up(u))``; Jakiro overrides the intermediate size to the hidden size."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GeluExpert(nn.Module):
    """Jakiro*'s GPT-NeoX-style expert ``proj(gelu(fc(u)))`` (official ``GptNeoxMLP``; parameter names kept)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class JakiroMoE(nn.Module):
    """Two SwiGLU experts and a 4-logit router (official ``mlp_moe``: ``gate`` + ``experts.{0,1}``).

    ``branches="moe"`` returns ``m_moe [..., H]``; ``branches="both"`` returns ``[m_moe, m_con]`` stacked on a new
    leading dim, ``[2, ..., H]`` (the penultimate inference step and every training step).
    Only E = 2 is defined: the official E > 2 path is internally inconsistent and no config uses it.
    """

    num_experts = 2

    def __init__(self, hidden_size: int, expert_intermediate_size: int | None = None) -> None:
        super().__init__()
        inner = expert_intermediate_size or hidden_size
        self.gate = nn.Linear(hidden_size, self.num_experts + 2, bias=False)
        self.experts = nn.ModuleList(SwiGLUExpert(hidden_size, inner) for _ in range(self.num_experts))

    def forward(self, u: torch.Tensor, branches: Branches = "moe") -> torch.Tensor:
        router = self.gate(u)
        y0, y1 = self.experts[0](u), self.experts[1](u)
        w = F.softmax(router[..., :2], dim=-1, dtype=u.dtype)
        m_moe = w[..., :1] * y0 + w[..., 1:] * y1
        if branches == "moe":
            return m_moe
        if branches != "both":
            raise ValueError(f"branches={branches!r}; use 'moe' or 'both'")
        v = F.softmax(router[..., 2:], dim=-1, dtype=u.dtype)
        # sign(r2 - r3) with ties -> -1, exactly the official strict ``r2 > r3`` test
        sign = torch.where(router[..., 2:3] > router[..., 3:4], 1.0, -1.0).to(u.dtype)
        m_con = sign * (v[..., :1] * y0 - v[..., 1:] * y1)
        return torch.stack([m_moe, m_con], dim=0)


class JakiroStarMoE(nn.Module):
    """Two GELU experts and a 2-logit router (Jakiro*).

    ``split=False`` (training): the weighted mixture ``w0 y0 + w1 y1`` with ``w = softmax(r0, r1)``.
    ``split=True`` (inference): ``[y_win, y_lose]`` stacked, ``[2, ..., H]``, *unweighted*; the winner is the
    expert with the larger router logit (ties -> expert 1, the official strict ``r0 > r1``).
    """

    num_experts = 2

    def __init__(self, hidden_size: int, expert_intermediate_size: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(GeluExpert(hidden_size, expert_intermediate_size) for _ in range(2))

    def forward(self, u: torch.Tensor, split: bool = False) -> torch.Tensor:
        router = self.gate(u)
        y0, y1 = self.experts[0](u), self.experts[1](u)
        if not split:
            w = F.softmax(router, dim=-1, dtype=u.dtype)
            return w[..., :1] * y0 + w[..., 1:] * y1
        first_wins = (router[..., :1] > router[..., 1:2])
        y_win = torch.where(first_wins, y0, y1)
        y_lose = torch.where(first_wins, y1, y0)
        return torch.stack([y_win, y_lose], dim=0)
